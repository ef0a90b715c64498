"""YAML is read in one place (data_collection/overrides.py::read_yaml): `lam pipeline` and `lam train`
answer a missing file or bad YAML with the same one line."""
import pytest

from cluster.config import ConfigError, load_pipeline_config
from training.train import read_config


@pytest.mark.parametrize("text,needle", [(None, "does not exist"), ("train: [1, 2\n", "not valid YAML"),
                                         ("- 1\n", "top level must be a mapping")])
def test_pipeline_and_train_configs_fail_alike(tmp_path, text, needle):
    p = tmp_path / "c.yaml"
    if text is not None:
        p.write_text(text)
    with pytest.raises(ConfigError) as pipeline:
        load_pipeline_config(p)
    with pytest.raises(ValueError) as train:
        read_config(str(p), [])
    assert str(pipeline.value) == str(train.value) and needle in str(train.value)


def test_train_reads_its_section_of_a_pipeline_config(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  lr: 0.001\ncollect: {}\n")
    assert read_config(str(p), ["lora.r=16"]) == {"lr": 0.001, "lora": {"r": 16}}
