import pytest
from attacker.lab.spec import TrainSpec
from attacker.lab.models_setup import lab_train_options
from models.training import default_model_id

def test_lab_train_spec_takes_the_training_time_defences():
    spec = TrainSpec(epochs=2, weight_decay=1e-3, weight_decay_scope="output", dp_epsilon=4.0).model_dump()
    opts = lab_train_options("lenet5", "digits", spec, 0)
    assert (opts.dp_epsilon, opts.dp_delta, opts.weight_decay_scope) == (4.0, 1e-5, "output")
    plain = lab_train_options("lenet5", "digits", TrainSpec(epochs=2).model_dump(), 0)
    assert plain.dp_epsilon is None and default_model_id(plain) != default_model_id(opts)
    with pytest.raises(ValueError, match="weight_decay_scope"):
        TrainSpec(weight_decay_scope="output")
    with pytest.raises(ValueError, match="dp_epsilon"):
        TrainSpec(dp_epsilon=0.0)
