"""The search-space wing's public names, for code outside ``orchestrator.space``.

A search space is read by :mod:`~orchestrator.space.yaml_io` (YAML, ``--set``), modelled by
:mod:`~orchestrator.space.model` (:class:`SweepSpec`) and :mod:`~orchestrator.space.domains`
(searched parameters), checked by :mod:`~orchestrator.space.validate` on the trial configs that
:mod:`~orchestrator.space.candidates` enumerates, and put together, stage by stage, by
:mod:`~orchestrator.space.parse` (:func:`parse_spec`, :func:`load_spec`). Dotted keys
(:func:`get_dotted`, :func:`set_dotted`) live in :mod:`trainables.core.config`.
"""
from __future__ import annotations

from orchestrator.space.candidates import Candidate, candidates
from orchestrator.space.domains import DOMAIN_KINDS, Domain, parse_domain
from orchestrator.space.model import (CheckpointSpec, ControlSpec, FailureSpec, ResourcesSpec, SchedulerSpec,
                                      SearchAlgSpec, StopSpec, SweepSpec, WatchdogSpec, spec_to_yaml)
from orchestrator.space.parse import load_spec, parse_spec
from orchestrator.space.yaml_io import apply_overrides, parse_yaml
from trainables.core.config import get_dotted, set_dotted

__all__ = ["DOMAIN_KINDS", "Candidate", "CheckpointSpec", "ControlSpec", "Domain", "FailureSpec", "ResourcesSpec",
           "SchedulerSpec", "SearchAlgSpec", "StopSpec", "SweepSpec", "WatchdogSpec", "apply_overrides", "candidates",
           "get_dotted", "load_spec", "parse_domain", "parse_spec", "parse_yaml", "set_dotted", "spec_to_yaml"]
