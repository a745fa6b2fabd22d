"""Student initialisers: random (the model's own), pretrained, a checkpoint, or weight selection
from a larger model of the same family."""
from trainables.init.student import STUDENT_INIT_KEYWORDS, WeightSelectionConfig, check_student_init, init_student
from trainables.init.weight_selection import apply_weight_selection, select_weights, uniform_indices

__all__ = ["STUDENT_INIT_KEYWORDS", "WeightSelectionConfig", "apply_weight_selection", "check_student_init",
           "init_student", "select_weights", "uniform_indices"]
