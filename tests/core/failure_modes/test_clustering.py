"""Grouping the errors: by confusion pair, then by the embeddings within a pair."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from cnnstress.core.failure_modes.clustering import cluster_errors

pytestmark = pytest.mark.usefixtures("one_thread")


def test_clustering_splits_a_pair_only_where_the_embeddings_do():
    rng = np.random.default_rng(0)
    one = rng.normal(0, 1, (60, 8)) + np.eye(8)[0] * 10
    two = np.concatenate(
        [
            rng.normal(0, 1, (40, 8)) + np.eye(8)[1] * 10,
            rng.normal(0, 1, (40, 8)) + np.eye(8)[2] * 10,
        ]
    )
    embeddings = np.concatenate([one, two])
    true = np.array([3] * 60 + [5] * 80)
    pred = np.array([4] * 60 + [6] * 80)
    fit = cluster_errors(embeddings, true, pred)
    assert fit.num_modes == 3
    assert len(set(fit.labels[:60])) == 1  # one blob, one mode
    assert set(fit.labels[60:100]).isdisjoint(fit.labels[100:])  # two blobs, two modes
    assert [(p.true, p.predicted, p.components) for p in fit.pairs] == [(3, 4, 1), (5, 6, 2)]
    fixed = cluster_errors(embeddings, true, pred, modes_per_pair=1)
    assert fixed.num_modes == 2


def test_scattered_errors_form_no_mode():
    rng = np.random.default_rng(0)
    true, pred = np.array([0, 1, 2, 3, 0]), np.array([1, 2, 3, 4, 2])  # five pairs of one
    fit = cluster_errors(rng.normal(size=(5, 8)), true, pred)
    assert fit.num_modes == 0 and fit.labels.tolist() == [-1] * 5
    assert [p.components for p in fit.pairs] == [0] * 5
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one error: no PCA of a single row
        single = cluster_errors(rng.normal(size=(1, 100)), true[:1], pred[:1])
    assert single.labels.tolist() == [-1]
    empty = cluster_errors(np.zeros((0, 8)), np.zeros(0), np.zeros(0))
    assert empty.num_modes == 0 and empty.labels.shape == (0,) and empty.pairs == ()
