"""Command-line overrides read with Hydra's parser (cnnstress.core.overrides): the group-choice
pre-check, the overrides that change a run's improvement, and the analysis' report-free output."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf, open_dict

from cnnstress.core.errors import ConfigError
from cnnstress.core.overrides import (
    check_analysis_output,
    check_group_choices,
    check_report_free,
    improvement_changes,
    override_values,
    overrides_changing,
    parse_overrides,
)
from tests.conftest import compose_train_config


# -- parsing ------------------------------------------------------------------------------------
def test_parse_overrides_reads_key_value_arguments_and_skips_flags():
    parsed = parse_overrides(["-m", "--cfg", "job", "model=a,b", "~seed", "+x.y=3"])
    assert [o.input_line for o in parsed] == ["model=a,b", "~seed", "+x.y=3"]
    assert [o.key_or_group for o in parsed] == ["model", "seed", "x.y"]
    assert parsed[1].is_delete() and parsed[2].is_add()
    assert parsed[2].value() == 3  # Hydra's typed value, not the string


def test_override_values_lists_each_value_a_sweep_or_a_list_sets():
    values = {o.input_line: override_values(o) for o in parse_overrides([
        "model=a,b", "seed=3", "augmentation=[crop,blur]", "augmentation=[],[crop]", "~seed",
    ])}  # fmt: skip
    assert values == {
        "model=a,b": ["a", "b"],
        "seed=3": [3],
        "augmentation=[crop,blur]": [["crop", "blur"]],
        "augmentation=[],[crop]": [[], ["crop"]],
        "~seed": [],
    }


@pytest.mark.parametrize(
    ("arg", "detail"),
    [
        ("model=[a", "no viable alternative at input '[a'"),
        ("a=b=c", "mismatched input '=' expecting <EOF>"),
    ],
)
def test_an_override_hydra_cannot_parse_is_one_config_error_line(arg, detail):
    with pytest.raises(ConfigError) as err:
        parse_overrides(["seed=1", arg])
    text = str(err.value)
    assert text.startswith(f"cannot parse override {arg!r}: ") and detail in text
    assert "\n" not in text


# -- group choices ------------------------------------------------------------------------------
@pytest.fixture
def conf_dir(tmp_path: Path) -> Path:
    """A ``conf/`` with groups ``model`` (a, b) and ``augmentation`` (crop, flip, blur)."""
    for group, options in {"model": "ab", "augmentation": ("crop", "flip", "blur")}.items():
        (tmp_path / group).mkdir()
        for option in options:
            (tmp_path / group / f"{option}.yaml").write_text("{}\n")
    return tmp_path


def test_known_group_choices_pass(conf_dir):
    check_group_choices(
        ["model=a", "model=a,b", "augmentation=[crop,blur]", "augmentation=[]", "seed=3",
         "model.net.width=8", "hydra/launcher=nowhere", "~augmentation", "-m"],
        conf_dir,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("arg", "expected"),
    [
        ("model=c", "unknown model option 'c'; valid choices: a, b"),
        ("model=a,zz", "unknown model option 'zz'; valid choices: a, b"),
        ("augmentation=[crop,blurr]", "unknown augmentation option 'blurr'; valid choices: "
         "blur, crop, flip"),
        ("augmentation=[crop],[cutout]", "unknown augmentation option 'cutout'; valid "
         "choices: blur, crop, flip"),
    ],
)  # fmt: skip
def test_an_unknown_group_choice_names_the_valid_ones(conf_dir, arg, expected):
    with pytest.raises(ConfigError) as err:
        check_group_choices(["seed=1", arg], conf_dir)
    assert str(err.value) == expected


def test_an_override_without_a_key_is_refused(conf_dir):
    with pytest.raises(ConfigError) as err:
        check_group_choices(["=3"], conf_dir)
    assert str(err.value) == "override '=3' has no key: write key=value, e.g. model=simple_cnn"


def test_group_choices_are_checked_against_the_real_conf_by_default():
    check_group_choices(["model=simple_cnn", "augmentation=[crop,flip,cutout]"])
    with pytest.raises(ConfigError, match=r"^unknown improvement option 'cutot'; valid choices: "
                       r"augment, baseline, cutmix, cutout, label_smoothing, mixup$"):  # fmt: skip
        check_group_choices(["improvement=cutot"])


# -- the overrides that change an improvement ---------------------------------------------------
def test_overrides_changing_selects_keys_at_or_below_the_prefixes():
    args = ["augmentation=[]", "+augmentation.cutout.size=8", "module.loss.label_smoothing=0.1",
            "module.lr=0.1", "augmentations_extra=1", "seed=2", "-m"]  # fmt: skip
    assert overrides_changing(args, ("augmentation", "module.loss")) == [
        "augmentation=[]", "+augmentation.cutout.size=8", "module.loss.label_smoothing=0.1",
    ]  # fmt: skip
    assert overrides_changing(args, ("trainer",)) == []


KEYS = ("augmentation", "module.loss")


@pytest.fixture(scope="module")
def composed(tmp_path_factory) -> dict[str, DictConfig]:
    """The real configs of the baseline and of Cutout (composed once for the module)."""
    out = tmp_path_factory.mktemp("run")
    return {
        name: compose_train_config(out, [f"improvement={name}"]) for name in ("baseline", "cutout")
    }


def ran_with(cfg: DictConfig, changes: dict[str, object]) -> DictConfig:
    """A copy of ``cfg`` with dotted keys set: the config a run with those overrides had."""
    cfg = cfg.copy()
    with open_dict(cfg):
        for key, value in changes.items():
            OmegaConf.update(cfg, key, value, merge=False, force_add=True)
    return cfg


@pytest.mark.parametrize(
    ("improvement", "changes", "overrides", "expected"),
    [
        # the improvement's own values, restated: exact
        ("baseline", {}, ["improvement=baseline", "augmentation=[crop,flip]"], []),
        ("cutout", {}, ["improvement=cutout", "seed=3", "module.loss.label_smoothing=0.0"], []),
        # changed: the overrides touching augmentation or loss, as typed
        ("baseline", {"augmentation": {}}, ["augmentation=[]", "seed=1"], ["augmentation=[]"]),
        ("cutout", {"augmentation.cutout.size": 8},
         ["improvement=cutout", "augmentation.cutout.size=8", "trainer.max_epochs=2"],
         ["augmentation.cutout.size=8"]),
        ("baseline", {"module.loss.label_smoothing": 0.1},
         ["module.loss.label_smoothing=0.1", "augmentation=[crop,flip]"],
         ["module.loss.label_smoothing=0.1", "augmentation=[crop,flip]"]),
    ],
)  # fmt: skip
def test_improvement_changes_compares_with_the_improvement_composed_without_them(
    composed, improvement, changes, overrides, expected
):
    GlobalHydra.instance().clear()  # outside a Hydra app: it composes conf/ itself
    cfg = ran_with(composed[improvement], changes)
    assert improvement_changes(cfg, overrides, KEYS) == expected


def test_improvement_changes_is_empty_without_an_override_touching_the_keys():
    # nothing to compose: whatever cfg holds, no override changed augmentation or loss
    assert improvement_changes(OmegaConf.create({}), ["seed=3", "model=resnet18"], KEYS) == []


# -- the analysis' output directory -------------------------------------------------------------
def test_an_analysis_may_not_write_into_a_directory_holding_a_report(tmp_path):
    check_report_free(tmp_path)
    check_analysis_output([f"hydra.run.dir={tmp_path}", "reference=baseline"])
    (tmp_path / "report.html").write_text("<html></html>")
    expected = (
        f"{tmp_path} already holds an analysis (report.html); give another hydra.run.dir, or "
        "leave it out for a new directory"
    )
    with pytest.raises(ConfigError) as err:
        check_report_free(tmp_path)
    assert str(err.value) == expected
    with pytest.raises(ConfigError) as err:
        check_analysis_output(["sweep=x", f"hydra.run.dir={tmp_path}"])
    assert str(err.value) == expected
    # other keys, and a sweep of run directories (each job its own), are not checked here
    check_analysis_output([f"hydra.sweep.dir={tmp_path}", f"hydra.run.dir={tmp_path},other"])
