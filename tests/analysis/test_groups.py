"""Grouping runs and naming the groups (cnnstress.analysis.groups) and the group key's names
(cnnstress.analysis.runs.GroupKey), on planted runs whose configs differ where a test says."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import OmegaConf

from cnnstress.analysis.groups import base_name, group_runs, improvement_keys, other_keys
from cnnstress.analysis.runs import GroupKey, Run
from cnnstress.core.identity import fingerprint, run_identity


def planted(
    improvement: str = "baseline",
    seed: int = 0,
    changed_by: tuple[str, ...] = (),
    dataset: str = "cifar10",
    **keys: Any,
) -> Run:
    """A run of ``improvement`` whose config also sets the dotted ``keys`` (``__`` for ``.``):
    four test images, all right."""
    config: dict[str, Any] = {"dataset": {"name": dataset}, "model": {"name": "net"}, "seed": seed,
                              "improvement": improvement}  # fmt: skip
    for dotted, value in keys.items():
        *parents, last = dotted.split("__")
        node = config
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    target = np.arange(4)
    probs = np.eye(10, dtype=np.float32)[target]
    return Run(Path(f"/planted/{improvement}_{seed}"), OmegaConf.create(config),
               run_identity(config), seed, improvement, changed_by, {"test/acc": 1.0},
               target, target, probs)  # fmt: skip


def names(groups: dict[GroupKey, list[Run]]) -> dict[str, list[int]]:
    """Group name -> the seeds of its runs."""
    return {key.name: sorted(r.seed for r in runs) for key, runs in groups.items()}


# -- GroupKey -----------------------------------------------------------------------------------
KEY = GroupKey(
    "cifar10", "resnet18", "baseline",
    apart=(("trainer.max_epochs", "30"), ("optimizer.lr", "0.05"), ("augmentation", "[crop]")),
)  # fmt: skip


def test_group_key_name_and_label_render_base_items_more_keys_and_tag():
    assert GroupKey("cifar10", "resnet18", "cutout").name == "cutout"
    assert GroupKey("cifar10", "resnet18", "cutout").label == "cifar10/resnet18/cutout"
    assert KEY.name == ("baseline [trainer.max_epochs=30, optimizer.lr=0.05, augmentation=[crop]]")
    more = GroupKey("c", "m", "baseline", apart=(("a", "1"),), more_keys=2, tag="0123ab")
    assert more.name == "baseline [a=1, +2 keys] #0123ab"
    assert more.label == "c/m/baseline [a=1, +2 keys] #0123ab"
    assert GroupKey("c", "m", "x", tag="beef00").name == "x #beef00"
    assert more.dataset_model == ("c", "m")


def test_answers_to_label_name_base_and_any_in_order_subset_of_the_items():
    for reference in (
        KEY.label, KEY.name, "baseline",
        "baseline [trainer.max_epochs=30]", "baseline [optimizer.lr=0.05]",
        "baseline [augmentation=[crop]]", "baseline [trainer.max_epochs=30, augmentation=[crop]]",
        "baseline [optimizer.lr=0.05, augmentation=[crop]]",
    ):  # fmt: skip
        assert KEY.answers_to(reference), reference
    for reference in (
        "baseline [optimizer.lr=0.05, trainer.max_epochs=30]",  # out of order
        "baseline [trainer.max_epochs=10]", "baseline []", "baseline [trainer.max_epochs=30",
        "baseline [trainer.max_epochs=30,optimizer.lr=0.05]", "cutout", "cifar10/baseline",
        "Baseline", "",
    ):  # fmt: skip
        assert not KEY.answers_to(reference), reference


def test_a_tagged_group_answers_to_its_full_name_and_its_base():
    key = GroupKey("c", "m", "baseline", apart=(("a", "1"),), more_keys=1, tag="abc123")
    assert key.answers_to("baseline [a=1, +1 keys] #abc123") and key.answers_to("c/m/" + key.name)
    assert key.answers_to("baseline [a=1]") and key.answers_to("baseline")
    assert not key.answers_to("baseline #abc123")


# -- base names ---------------------------------------------------------------------------------
def test_base_name_is_the_improvement_when_a_run_is_exactly_it():
    assert base_name([planted("cutout"), planted("cutout", 1)]) == "cutout"
    # the same config ran under two labels, one exactly: that one
    assert base_name([planted("baseline", 0, ("augmentation=[crop,flip,cutout]",)),
                      planted("cutout", 1)]) == "cutout"  # fmt: skip
    assert base_name([planted("zeta"), planted("alpha", 1)]) == "alpha"  # the first, sorted


def test_base_name_of_changed_runs_is_the_overrides_after_a_non_baseline_improvement():
    assert base_name([planted("baseline", 0, ("augmentation=[]",))]) == "augmentation=[]"
    assert base_name([planted("cutout", 0, ("augmentation.cutout.size=8",))]) == (
        "cutout augmentation.cutout.size=8"
    )
    two = ("augmentation=[crop]", "module.loss.label_smoothing=0.1")
    assert base_name([planted("baseline", 0, two)]) == (
        "augmentation=[crop] module.loss.label_smoothing=0.1"
    )
    # several spellings of one config: the shortest
    spellings = [planted("cutout", 0, ("augmentation.cutout.size=8",)),
                 planted("baseline", 1, ("augmentation=[crop]",))]  # fmt: skip
    assert base_name(spellings) == "augmentation=[crop]"


def test_improvement_keys_and_other_keys_split_at_augmentation_and_loss():
    keys = ["augmentation", "augmentation.cutout.size", "module.loss.label_smoothing",
            "module.lr", "augmentations", "trainer.max_epochs"]  # fmt: skip
    assert improvement_keys(keys) == keys[:3]
    assert other_keys(keys) == keys[3:]


# -- group_runs ---------------------------------------------------------------------------------
def test_runs_differing_only_in_the_seed_form_one_group():
    runs = [planted("baseline", s) for s in (2, 0, 1)]
    runs.append(planted("cutout", 0, augmentation=["crop", "flip", "cutout"]))
    groups = group_runs(runs)
    assert names(groups) == {"baseline": [0, 1, 2], "cutout": [0]}
    key = next(k for k in groups if k.base == "baseline")
    assert (key.apart, key.more_keys, key.tag) == ((), 0, "")
    assert key.config_id == fingerprint(runs[0].group_identity) == runs[0].group_id[2]


def test_the_label_is_not_part_of_a_group_so_one_config_under_two_labels_is_one_group():
    groups = group_runs([planted("cutout", 0), planted("baseline", 1)])
    assert names(groups) == {"baseline": [0, 1]}  # both exactly their label: the first, sorted


def test_same_named_groups_are_named_apart_by_the_keys_they_differ_in():
    runs = [planted(seed=s, trainer__max_epochs=e) for e in (10, 30) for s in (0, 1)]
    runs.append(planted(dataset="cifar100", trainer__max_epochs=10))  # another dataset
    groups = group_runs(runs)
    assert names(groups) == {
        "baseline [trainer.max_epochs=10]": [0, 1],
        "baseline [trainer.max_epochs=30]": [0, 1],
        "baseline": [0],
    }
    assert {k.label for k in groups} == {
        "cifar10/net/baseline [trainer.max_epochs=10]",
        "cifar10/net/baseline [trainer.max_epochs=30]",
        "cifar100/net/baseline",
    }


def test_a_key_only_one_group_sets_shows_unset_and_lists_show_compactly():
    runs = [planted(augmentation=["crop", "flip"]), planted(augmentation=["crop"], x__y=1)]
    assert set(names(group_runs(runs))) == {
        "baseline [x.y=<unset>, augmentation=[crop,flip]]",
        "baseline [x.y=1, augmentation=[crop]]",
    }


def test_other_keys_come_before_improvement_keys_and_the_rest_are_counted():
    a = planted(augmentation__cutout__size=8, a=1, b=1, trainer__max_epochs=10, z=1)
    b = planted(augmentation__cutout__size=16, a=2, b=2, trainer__max_epochs=30, z=2)
    keys = sorted(group_runs([a, b]), key=lambda k: k.name)
    assert [k.name for k in keys] == [
        "baseline [a=1, b=1, trainer.max_epochs=10, +2 keys]",
        "baseline [a=2, b=2, trainer.max_epochs=30, +2 keys]",
    ]
    assert all(k.tag == "" and k.more_keys == 2 for k in keys)


def test_a_tag_is_added_only_when_the_shown_keys_do_not_tell_groups_apart():
    a = planted(k1=1, k2=1, k3=1, k4=1)
    b = planted(k1=1, k2=1, k3=1, k4=2)  # differs from a only in the fourth key: not shown
    c = planted(k1=2, k2=2, k3=2, k4=1)
    groups = group_runs([a, b, c])
    by_config = {k.config_id: k for k in groups}
    ka, kb, kc = (by_config[r.group_id[2]] for r in (a, b, c))
    assert ka.tag == a.group_id[2][:6] and kb.tag == b.group_id[2][:6] and ka.tag != kb.tag
    assert ka.name == f"baseline [k1=1, k2=1, k3=1, +1 keys] #{ka.tag}"
    assert kc.tag == "" and kc.name == "baseline [k1=2, k2=2, k3=2, +1 keys]"
    assert len({k.name for k in groups}) == 3  # every group has a name of its own


def test_groups_of_changed_runs_are_named_by_their_overrides():
    runs = [
        planted("baseline", 0, ("augmentation=[]",), augmentation={}),
        planted("baseline", 1, ("augmentation=[]",), augmentation={}),
        planted("cutout", 0, ("augmentation.cutout.size=8",), augmentation__cutout__size=8),
        planted("baseline", 0, augmentation=["crop", "flip"]),
    ]
    assert names(group_runs(runs)) == {
        "augmentation=[]": [0, 1],
        "cutout augmentation.cutout.size=8": [0],
        "baseline": [0],
    }
