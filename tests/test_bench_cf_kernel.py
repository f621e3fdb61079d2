"""The kernel-rank helper of tools.bench_cf_kernel (the dimension of the engine's column basis)."""

import numpy as np

from tools.bench_cf_kernel import kernel_rank


def test_kernel_rank_counts_the_monomials_of_degree_two_and_ignores_constant_features():
    x = np.random.default_rng(0).standard_normal((60, 3))
    assert kernel_rank(x, 1e-10) == 10  # 1 + 3 + 3 * 4 / 2
    with_constant = np.hstack([x, np.full((60, 1), 7.0)])
    assert kernel_rank(with_constant, 1e-10) == 10
    assert kernel_rank(x[:, :1], 1e-10) == 3  # 1, x, x^2


def test_kernel_rank_of_one_hot_features_is_below_the_bound():
    codes = np.random.default_rng(1).integers(0, 4, size=(200, 2))
    one_hot = np.hstack([np.eye(4)[codes[:, 0]], np.eye(4)[codes[:, 1]]])
    bound = 1 + 8 + 8 * 9 // 2
    assert kernel_rank(one_hot, 1e-10) < bound
    assert kernel_rank(one_hot, 1e-10) <= 16  # at most the 4 x 4 distinct columns
