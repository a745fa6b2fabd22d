"""Sel-CL (Li et al. 2022, "Selective-Supervised Contrastive Learning with Noisy Labels"), the
first stage of the noisy-label experiment of "Vision Superalignment" (ggjy/vision_weak_to_strong,
``noisy_labels_learning/``): contrastive training that selects, after every epoch, the examples
whose noisy label its kNN neighbourhood agrees with (:mod:`.selection`) and the confident pairs
among them (:mod:`.pairs`), learns from those pairs (:mod:`.losses`, :mod:`.stage`), and hands
the ``distill`` trainable a teacher (``teacher.init: selcl``) or a student's start and training
subset (``student_init: selcl``)."""
