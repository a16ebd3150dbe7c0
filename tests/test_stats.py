"""tsloss_cuda.stats: the intervals cover what they claim, with the small numbers of seeds a
comparison has (simulated), and each decision rule refuses what it should."""
import itertools
import math

import numpy as np
import pytest

from tsloss_cuda import stats
from tsloss_cuda.stats import Interval


def _coverage(draw, mu, n, reps, rng, n_boot):
    hits = plain = 0
    for i in range(reps):
        d = draw(rng, n)
        iv = stats.mean_interval(dict(enumerate(d)), n_boot=n_boot, seed=i)
        hits += iv.low <= mu <= iv.high
        if n == 5:  # the plain 2.5 / 97.5 % percentile bootstrap, exactly, for contrast
            counts, w, _ = stats.resamples(n, 1, 0)
            m = counts @ d / n
            o = np.argsort(m)
            cum = np.cumsum(w[o])
            lo, hi = m[o][np.searchsorted(cum, 0.025)], m[o][np.searchsorted(cum, 0.975)]
            plain += lo <= mu <= hi
    return hits / reps, plain / reps


@pytest.mark.parametrize("name,draw,mu,low", [
    ("normal", lambda r, n: r.normal(0.0, 1.0, n), 0.0, 0.93),
    ("exponential", lambda r, n: r.exponential(1.0, n), 1.0, 0.91),  # skewed: a t interval
])                                                                  # covers ~0.90-0.93 too
def test_mean_interval_covers_95_percent_with_few_seeds(name, draw, mu, low):
    """1500 simulated data sets each at n = 5 (resamples enumerated) and n = 10 (1000 drawn):
    Monte-Carlo sd of a coverage is 0.006. The plain percentile bootstrap covers ~0.84 at
    n = 5 (normal), which the same bound rejects."""
    rng = np.random.default_rng(7)
    for n in (5, 10):
        cover, plain = _coverage(draw, mu, n, 1500, rng, n_boot=1000)
        assert low <= cover <= 0.98, (name, n, cover)  # the t ends make it conservative
        if n == 5:
            assert plain < 0.9, (name, plain)


def test_exact_resamples_are_the_ordered_bootstrap():
    """The multiset enumeration with multinomial weights is the n^n equally likely ordered
    resamples, grouped: the same distribution of the mean, so the same interval."""
    d = np.array([0.0, 0.1, 0.2, 1.5])  # skewed: the bootstrap-t's high end, the t interval's low
    counts, w, exact = stats.resamples(4, 1, 0)
    assert exact and len(counts) == math.comb(7, 4) and w.sum() == pytest.approx(1)
    ordered = np.array(list(itertools.product(range(4), repeat=4)))
    means_o = np.sort(d[ordered].mean(1))
    means_w = counts @ d / 4
    for q in np.linspace(0, 1, 9):  # same CDF at every value
        v = means_o[min(int(q * (len(means_o) - 1)), len(means_o) - 1)]
        assert np.mean(means_o <= v + 1e-12) == pytest.approx(w[means_w <= v + 1e-12].sum())

    # the studentized interval from a direct computation over the 256 ordered resamples
    se = d.std(ddof=1) / 2

    def t_star(idx):  # a resample without spread is standardised by the sample's se
        x = d[idx]
        se_b = x.std(ddof=1) / 2
        return (x.mean() - d.mean()) / (se_b if se_b > 1e-12 else se)
    t = np.sort([t_star(i) for i in ordered])
    q_lo, q_hi = t[math.ceil(0.025 * 256) - 1], t[math.ceil(0.975 * 256) - 1]
    boot = (d.mean() - q_hi * se, d.mean() - q_lo * se)
    student = (d.mean() - 3.182446 * se, d.mean() + 3.182446 * se)  # t(0.975, 3 df)
    assert boot[1] > student[1] + 1 and student[0] < boot[0] - 0.1  # each gives one end
    iv = stats.mean_interval(dict(enumerate(d)))
    assert (iv.low, iv.high) == pytest.approx((student[0], boot[1]))
    assert iv.mc_error == 0


def test_few_seeds_give_unbounded_or_no_interval():
    three = stats.mean_interval({0: 1.0, 1: 2.0, 2: 3.5})
    assert three.low == -math.inf and three.high == math.inf  # 1/27 single-seed resamples
    assert three.decide(+1) == "untested"
    one = stats.mean_interval({0: 1.0})
    assert one.value == 1 and math.isnan(one.low) and one.decide(+1) == "untested"


def test_tied_values_keep_the_interval_finite():
    """Resamples of tied values only have no spread; standardised by the sample's se they keep
    both ends finite (as +-inf, three equal differences of 0.2 made the low end -inf)."""
    iv = stats.mean_interval({0: 0.2, 1: 0.2, 2: 0.2, 3: 0.15, 4: 0.1})
    assert 0.1 < iv.low < iv.value < iv.high < 0.25 and iv.decide(+1) == "held"


def test_ends_are_clipped_to_the_possible_range():
    d = {0: 0.007, 1: -0.033, 2: -0.207, 3: 0.0, 4: 0.007}  # one outlying seed
    free = stats.mean_interval(d)
    assert free.low < -1  # studentized: wide on the outlier's side
    clipped = stats.mean_interval(d, bounds=(-1.0, 1.0))
    assert clipped[:3] == (free.value, -1.0, free.high)


def test_enumerated_intervals_do_not_depend_on_the_rng_seed():
    d = {s: v for s, v in enumerate([0.02, 0.05, -0.01, 0.04, 0.03])}
    assert len({stats.mean_interval(d, seed=s) for s in range(5)}) == 1


@pytest.mark.parametrize("n_boot", [0, -5])
def test_n_boot_below_one_is_refused(n_boot):
    """Drawn (10 seeds), n_boot 0 divided by zero and -5 reached numpy as "negative
    dimensions"; enumerated (5 seeds) it was ignored. Each public function names it either
    way, checked on entry: also where no resample is made (3 seeds, or no spread)."""
    many, few = dict(enumerate(np.linspace(0, 1, 10))), dict(enumerate([0.1, 0.3, 0.2, 0.5, 0.4]))
    calls = [lambda: stats.mean_interval(many, n_boot=n_boot),
             lambda: stats.mean_interval(few, n_boot=n_boot),
             lambda: stats.mean_interval({0: 0.1, 1: 0.3, 2: 0.2}, n_boot=n_boot),
             lambda: stats.mean_interval(dict.fromkeys(range(5), 0.5), n_boot=n_boot),
             lambda: stats.paired_difference(many, dict.fromkeys(many, 0.0), n_boot=n_boot),
             lambda: stats.spearman_interval(list(many.values()), list(many.values())[::-1],
                                             n_boot=n_boot),
             lambda: stats.spearman_interval([1.0, 2.0, 3.0], [3.0, 1.0, 2.0], n_boot=n_boot)]
    for call in calls:
        with pytest.raises(ValueError, match=rf"^n_boot must be >= 1, got {n_boot}$"):
            call()


def test_floating_point_zero_is_zero():
    """0.1 + 0.2 - 0.3 = 5.6e-17 on every seed: data without spread have no interval (it was
    the point [5.6e-17, 5.6e-17], above 0 only by rounding), and an end that rounding puts
    just past 0 does not count."""
    iv = stats.paired_difference({s: 0.1 + 0.2 for s in range(5)}, {s: 0.3 for s in range(5)})
    assert 0 < iv.value < 1e-16 and math.isnan(iv.low) and iv.undefined == 1
    assert iv.decide(+1) == iv.decide(-1) == "not held" and not iv.excludes_zero(+1)
    assert Interval(0.0, -0.3, -2.2e-17, 5).decide(-1) == "not held"
    assert Interval(0.1, 1e-6, 0.2, 5).decide(+1) == "held"


def test_tied_discrete_differences_do_not_make_effects():
    """Accuracy differences come in steps of one validation example and tie often. With no
    true effect (-1, 0 or +1 example in 150 with probabilities .3, .4, .3), the bootstrap-t
    alone called a one-sided effect 7.6 % of the time at n = 5 (nominal 2.5 %) and covered 86 %;
    with the t interval's ends it must stay near nominal. 1000 data sets at n = 4 and 5:
    Monte-Carlo sd of the rate ~0.005."""
    rng = np.random.default_rng(11)
    for n in (4, 5):
        held = covered = 0
        for _ in range(1000):
            d = rng.choice([-1, 0, 1], size=n, p=[0.3, 0.4, 0.3]) / 150
            iv = stats.mean_interval(dict(enumerate(d)))
            held += iv.decide(+1) == "held"
            covered += not (iv.low > 0 or iv.high < 0)  # NaN (no spread) counts as covering
        assert held / 1000 <= 0.035 and covered / 1000 >= 0.93, (n, held, covered)
    # the reviewer's cases: each "held" before
    for d in ([0, 0, 1, 1, 1], [0, 1, 1, 1]):
        iv = stats.mean_interval(dict(enumerate(np.array(d) / 150)))
        assert iv.low < 0 < iv.high and iv.decide(+1) == "not held", (d, iv)
    same = stats.mean_interval({i: 1 / 150 for i in range(4)})
    assert same.decide(+1) == "untested" and same.undefined == 1


def test_data_without_spread_are_decided_by_the_sign_test():
    """Every seed the same difference: no interval exists, and the decision must not be less
    than what one more, different seed would give (five at +1 and one at +2 held)."""
    five, six = ({i: 1 / 150 for i in range(n)} for n in (5, 6))
    assert stats.mean_interval(five).decide(+1) == "untested"  # 5 of 5: p = 0.0625
    assert stats.mean_interval(six).decide(+1) == "held"  # 6 of 6: p = 0.031
    assert stats.mean_interval({**six, 5: 2 / 150}).decide(+1) == "held"
    assert stats.mean_interval(six).decide(-1) == "not held"
    assert stats.mean_interval({i: -1 / 150 for i in range(20)}).decide(+1) == "not held"


def test_randomization_p_is_the_share_of_sign_vectors():
    """The exact paired randomization test: every one of the 2^n sign vectors, counted where
    |sum ±|d|| reaches the observed |sum d| (ties within rounding count)."""
    rng = np.random.default_rng(3)
    for d in ([1, 1, 1, 1, 1, 1, -1], [0, 1, 1, 1, 1, 1], rng.normal(0.3, 1, 9),
              np.array([3, -1, 2, 2, 0, 1, 1, -2]) / 150):
        d = np.asarray(d, dtype=float)
        obs = abs(d.sum())
        want = np.mean([abs(np.dot(s, np.abs(d))) >= obs - 1e-12
                        for s in itertools.product((1, -1), repeat=d.size)])
        assert stats.randomization_p(d) == (pytest.approx(want), 0.0)
    assert stats.randomization_p([1.0] * 6)[0] == 2 / 64
    assert stats.randomization_p([0.0, 1, 1, 1, 1, 1])[0] == 2 / 32  # a zero flips to itself


def test_randomization_p_is_drawn_beyond_twenty_units(monkeypatch):
    """Above RANDOMIZATION_EXACT_MAX the sign vectors are drawn (seeded): p is within its
    Monte-Carlo error of the enumerated p, and the same seed gives the same p."""
    d = np.random.default_rng(5).normal(0.4, 1, 21)
    p, err = stats.randomization_p(d, n_draws=20000, seed=1)
    assert err > 0 and (p, err) == stats.randomization_p(d, n_draws=20000, seed=1)
    monkeypatch.setattr(stats, "RANDOMIZATION_EXACT_MAX", 21)
    exact, zero = stats.randomization_p(d)
    assert zero == 0 and abs(p - exact) <= err, (p, exact, err)
    monkeypatch.undo()
    iv = stats.mean_interval(dict(enumerate(d)), n_boot=2000)
    assert iv.randomization_mc > 0 and iv.randomization_p == stats.randomization_p(
        d, n_draws=2000, seed=0)[0]
    # The observed signs count among the draws: where no drawn vector reaches them (21 equal
    # signs, 20 draws), p is 1/21, never 0 (which would call an effect 'held' at any n_draws).
    same = {i: 1.0 + 0.01 * (i % 3) for i in range(21)}
    p, err = stats.randomization_p(list(same.values()), n_draws=20, seed=0)
    assert p == 1 / 21 and err > 0
    iv = stats.mean_interval(same, n_boot=20)
    assert iv.randomization_p == 1 / 21 and iv.decide(+1) == "inconclusive"


def test_discrete_means_need_the_randomization_test_from_six_seeds():
    """7 seeds at +1 example of 150 but one at -1: Student's t p = 0.047, and the interval
    excluded 0 ('held'), though the exact sign-flip test gives p = 0.125. Enumerated under no
    effect (each seed ±1 at random), the interval alone called an effect 8/128 = 6.25 % of the
    time (nominal one-sided 2.5 %). From 6 seeds 'held' also needs the randomization p < 0.05;
    with 5 or fewer it cannot reach that and is not computed."""
    d = {i: v / 150 for i, v in enumerate([1, 1, 1, 1, 1, 1, -1])}
    iv = stats.mean_interval(d, bounds=(-1, 1))
    assert iv.low > 0 and iv.randomization_p == 0.125 and iv.decide(+1) == "not held"
    for n in (6, 7, 8, 9):
        rate = sum(math.comb(n, k) / 2 ** n for k in range(n + 1)
                   if stats.mean_interval({i: (1 if i < k else -1) / 150 for i in range(n)}
                                          ).decide(+1) == "held")
        assert rate <= 0.025, (n, rate)
    assert math.isnan(stats.mean_interval({i: v for i, v in enumerate([1, 1, 1, 1, 2.0])}
                                          ).randomization_p)
    # an effect the exact test sees still holds: 6 of 6 positive (p = 2/64)
    six = stats.mean_interval({i: v / 150 for i, v in enumerate([1, 2, 1, 3, 1, 2])})
    assert six.randomization_p == 2 / 64 and six.decide(+1) == "held"


def test_decide_combines_the_interval_and_the_randomization_test():
    """An Interval built without randomization_p decides as before; with it, 'held' needs
    p < 0.05 beyond its Monte-Carlo error, and within that error it is inconclusive."""
    assert Interval(0.1, 0.05, 0.2, 5).decide(+1) == "held"
    assert Interval(0.1, 0.05, 0.2, 7, randomization_p=0.03).decide(+1) == "held"
    assert Interval(0.1, 0.05, 0.2, 7, randomization_p=0.06).decide(+1) == "not held"
    assert Interval(0.1, 0.05, 0.2, 30, randomization_p=0.045,
                    randomization_mc=0.01).decide(+1) == "inconclusive"
    assert Interval(0.1, 0.001, 0.2, 30, mc_error=0.01, randomization_p=0.2,
                    randomization_mc=0.01).decide(+1) == "not held"
    assert Interval(0.1, -0.05, 0.2, 7, randomization_p=0.01).decide(+1) == "not held"


def test_an_end_from_the_t_interval_has_no_monte_carlo_error():
    """10 seeds draw resamples, so bootstrap ends carry a Monte-Carlo error; an end that
    Student's t gave does not, and must not make a near end inconclusive."""
    assert Interval(0.1, 0.004, 0.2, 12, mc_error=0.01, mc_ends=(False, True)).decide(+1) == "held"
    assert Interval(0.1, 0.004, 0.2, 12, mc_error=0.01).decide(+1) == "inconclusive"
    d = np.array([0.0, 0.1, 0.2, 0.1, 0.3, 0.2, 0.1, 0.0, 0.2, 2.5])  # skewed: ends from both
    iv = stats.mean_interval(dict(enumerate(d)), n_boot=2000)
    half = stats.t_975(9) * d.std(ddof=1) / math.sqrt(10)
    assert iv.mc_error > 0
    assert iv.mc_ends == (iv.low != pytest.approx(d.mean() - half, abs=1e-12),
                          iv.high != pytest.approx(d.mean() + half, abs=1e-12))
    assert iv.mc_ends == (False, True)  # the low end is t's, the high the bootstrap's


def test_monte_carlo_error_is_the_99_percent_band_of_the_end_ranks():
    """mc_error, recomputed from its definition on the same draws: the studentized end's rank
    among the draws moves by about z(0.995)·sqrt(B·0.025·0.975) from one RNG seed to
    another; the error is the most an end moves over that band, in units of the se."""
    d = np.linspace(-0.3, 1.5, 10)
    iv = stats.mean_interval(dict(enumerate(d)), n_boot=4000, seed=0)
    counts, _, exact = stats.resamples(10, 4000, 0)
    assert not exact
    se = d.std(ddof=1) / math.sqrt(10)
    m = counts @ d / 10
    se_b = np.sqrt((counts * (d[None] - m[:, None]) ** 2).sum(1) / 9 / 10)
    t = np.sort((m - d.mean()) / se_b)
    h = 2.5758293 * math.sqrt(4000 * 0.025 * 0.975)  # z(0.995): a 99 % band
    want = 0.0
    for q in (0.025, 0.975):
        i = int(np.searchsorted(np.arange(1, 4001) / 4000, q - 1e-12))
        lo, hi = max(int(i - h), 0), min(math.ceil(i + h), 3999)
        want = max(want, (t[i] - t[lo]) * se, (t[hi] - t[i]) * se)
    assert iv.mc_error == pytest.approx(want, rel=1e-9)


def test_jackknife_se_is_the_delete_one_formula():
    """The cluster jackknife se of Fisher's z, by hand: sqrt((n-1)/n · Σ (z_(i) - mean)²) over
    the n leave-one-cluster-out estimates."""
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=8), rng.normal(size=8)
    y = x + y
    c = np.repeat(np.arange(4), 2)  # 4 clusters of 2 runs
    z = np.array([math.atanh(stats.spearman(x[c != k], y[c != k])) for k in range(4)])
    want = math.sqrt(3 / 4 * ((z - z.mean()) ** 2).sum())
    got = stats._jackknife_se(x, y, c, np.ones((1, 4)))[0]
    assert got == pytest.approx(want, rel=1e-12)


def test_t_quantile():
    assert stats.t_975(1) == pytest.approx(12.706205) and stats.t_975(4) == pytest.approx(2.776445)
    assert stats.t_975(30) == pytest.approx(2.042272, abs=1e-6)
    for df, exact in ((31, 2.039513446), (60, 2.000297822), (1000, 1.962339081)):
        assert stats.t_975(df) == pytest.approx(exact, abs=1e-7)
    with pytest.raises(ValueError, match="df"):
        stats.t_975(0)


def test_monte_carlo_error_makes_a_near_end_inconclusive():
    assert Interval(0.1, 0.004, 0.2, 12, mc_error=0.01).decide(+1) == "inconclusive"
    assert Interval(0.1, -0.004, 0.2, 12, mc_error=0.01).decide(+1) == "inconclusive"
    assert Interval(0.1, 0.02, 0.2, 12, mc_error=0.01).decide(+1) == "held"
    assert Interval(0.1, -0.02, 0.2, 12, mc_error=0.01).decide(+1) == "not held"
    # 10 seeds are drawn, not enumerated: the ends carry a Monte-Carlo error, and well away
    # from 0 the decision is the same whatever the RNG seed.
    d = dict(enumerate(np.linspace(-0.3, 1.5, 10)))
    ivs = [stats.mean_interval(d, n_boot=4000, seed=s) for s in range(3)]
    assert all(0 < iv.mc_error < 0.1 for iv in ivs)
    assert {iv.decide(+1) for iv in ivs} == {"held"}


def test_nonfinite_values_are_visible():
    iv = stats.paired_difference({0: 1, 1: 2, 2: float("nan"), 3: 4, 4: 5},
                                 dict.fromkeys(range(5), 0))
    assert math.isnan(iv.value) and math.isnan(iv.low) and iv.nonfinite == 1
    assert iv.decide(+1) == "untested"
    with pytest.raises(ValueError, match="non-finite"):
        stats.spearman([1, 2, float("nan")], [1, 2, 3])
    sp = stats.spearman_interval([1, 2, float("nan"), 4, 5, 6], [1, 2, 3, 4, 6, 5])
    assert sp.nonfinite == 1 and sp.value == pytest.approx(stats.spearman([1, 2, 4, 5, 6],
                                                                          [1, 2, 4, 6, 5]))


def test_weighted_spearman_is_spearman_of_the_copies(rng):
    x, y = rng.integers(0, 4, 12).astype(float), rng.normal(size=12)  # ties in x
    c = rng.integers(0, 3, (6, 12)).astype(float)
    got = stats._spearman_weighted(x, y, c)
    for row, g in zip(c, got):
        k = row.astype(int)
        xs, ys = np.repeat(x, k), np.repeat(y, k)
        want = stats.spearman(xs, ys) if len(set(xs)) > 1 and len(set(ys)) > 1 else math.nan
        assert g == pytest.approx(want, nan_ok=True)


def test_spearman_interval_resamples_seeds_not_runs():
    """7 near-copies of each of 5 seeds: 35 runs but 5 independent units. Resampling runs
    finds a correlation; resampling seeds, rightly, does not."""
    rng = np.random.default_rng(0)
    seeds = np.repeat(np.arange(5), 7)
    x = np.array([1, 2, 3, 4, 5.0])[seeds] + rng.normal(0, 0.01, 35)
    y = np.array([3, 1, 2, 5, 4.0])[seeds] + rng.normal(0, 0.01, 35)
    runs = stats.spearman_interval(x, y, n_boot=2000)
    by_seed = stats.spearman_interval(x, y, seeds)
    assert runs.n == 35 and by_seed.n == 5 and runs.value == by_seed.value
    assert runs.decide(+1) == "held" and by_seed.decide(+1) == "not held"
    assert by_seed.mc_error == 0  # 126 resamples of 5 seeds, enumerated
    # 12 seeds are drawn, not enumerated: a Monte-Carlo error, and the same verdict whatever
    # the RNG seed.
    twelve = np.repeat(np.arange(12), 2)
    xs, ys = np.arange(24.0), np.arange(24.0) + rng.normal(0, 4, 24)
    drawn = [stats.spearman_interval(xs, ys, twelve, n_boot=2000, seed=s) for s in range(3)]
    assert all(iv.mc_error > 0 and iv.n == 12 for iv in drawn)
    assert {iv.decide(+1) for iv in drawn} == {"held"}
    two = stats.spearman_interval(x[:2], y[:2])  # n < 3: no interval at all, not (-inf, inf)
    assert two.decide(-1) == "untested" and math.isnan(two.low) and math.isnan(two.high)
    assert stats.spearman_interval(x[:7], y[:7], seeds[:7]).decide(-1) == "untested"  # 1 seed
    assert stats.spearman_interval(x[:21], y[:21], seeds[:21]).decide(-1) == "untested"  # 3


def test_steps_outcome_and_sign_test():
    """Censored runs: reached against censored is a win, both censored a tie."""
    assert stats.steps_outcome((10.0, True), (35.0, False)) == 1
    assert stats.steps_outcome((35.0, False), (30.0, True)) == -1
    assert stats.steps_outcome((35.0, False), (35.0, False)) == 0
    assert stats.steps_outcome((35.0, False), (40.0, False)) == 0  # runs of other lengths
    assert stats.steps_outcome((20.0, True), (25.0, True)) == 1
    six = stats.sign_test(dict.fromkeys(range(6), 1))
    assert six == (6, 0, 0, pytest.approx(2 / 64)) and six.decide(+1) == "held"
    five = stats.sign_test({**dict.fromkeys(range(5), 1), 5: 0})
    assert five.p == pytest.approx(2 / 32) and five.decide(+1) == "untested"  # 5 untied
    mixed = stats.sign_test({**dict.fromkeys(range(6), 1), 6: -1})
    assert mixed.p == pytest.approx(2 * 8 / 128) and mixed.decide(+1) == "not held"
    assert stats.sign_test(dict.fromkeys(range(6), -1)).decide(-1) == "held"


def test_censoring_does_not_pull_the_comparison_to_zero():
    """Variant reaches 0.8 at step 10 on 6 seeds; the baseline never does in 30 steps. The
    censored mean difference (-25) understates the gap; the sign test counts 6 wins."""
    def rows(hit):
        return [{"step": s, "val_acc": 0.9 if hit and s >= 10 else 0.5} for s in range(0, 35, 5)]
    res = ([{"regularizer": "tsloss", "seed": s, "rows": rows(True)} for s in range(6)]
           + [{"regularizer": "none", "seed": s, "rows": rows(False)} for s in range(6)])
    v, b = (stats.steps_by_seed(res, x, 0.8) for x in ("tsloss", "none"))
    assert v[0] == (10.0, True) and b[0] == (35.0, False)
    t = stats.sign_test(stats.paired_outcomes(v, b))
    assert (t.wins, t.ties, t.losses) == (6, 0, 0) and t.decide(+1) == "held"
    assert stats.run_summary(rows(False), 0.8)["reached"] == 0.0


def test_a_row_at_the_target_reaches_it():
    rows = [{"step": s, "val_acc": a} for s, a in ((0, 0.5), (5, 0.8), (10, 0.9))]
    assert stats.steps_to_target(rows, 0.8) == 5  # an accuracy equal to the target counts
    assert stats.run_summary(rows, 0.8)["reached"] == 1.0


def test_a_single_row_run_is_censored_after_its_step():
    # One row gives no logging interval: the run had not reached the target at its only step,
    # so the earliest it could is one step later, not that step.
    rows = [{"step": 10, "val_acc": 0.5}]
    assert stats.log_interval(rows) == 1
    assert stats.censored_steps(rows, 0.8) == 11.0


def test_auc_of_rows_at_one_step_is_the_last_accuracy():
    # No step span to divide by: the mean accuracy is the last one, not 0/0.
    rows = [{"step": 5, "val_acc": 0.3}, {"step": 5, "val_acc": 0.6}]
    assert stats.accuracy_auc(rows) == 0.6


def test_both_reached_at_the_same_step_is_a_tie():
    assert stats.steps_outcome((10.0, True), (10.0, True)) == 0
    t = stats.sign_test(stats.paired_outcomes({s: (10.0, True) for s in range(6)},
                                              {s: (10.0, True) for s in range(6)}))
    assert (t.wins, t.ties, t.losses) == (0, 6, 0) and t.decide(+1) == "untested"


def test_sign_test_p_is_at_most_one():
    # Equal wins and losses: both tails hold the middle term, so 2·tail exceeds 1 unclipped.
    assert stats.sign_test({0: 1, 1: -1}).p == 1.0
    assert stats.sign_test({**dict.fromkeys(range(4), 1), **dict.fromkeys(range(4, 8), -1),
                            8: 0}).p == 1.0


def test_perfect_rank_correlation_keeps_a_finite_interval():
    """Monotone data: every resample has rho = ±1, whose Fisher z is infinite; clipped, the
    interval is the point ±1 and the claim is decided, not left NaN."""
    x = np.arange(5.0)
    up = stats.spearman_interval(x, x ** 3)
    assert up.value == 1 and up.low == pytest.approx(1) and up.high == pytest.approx(1)
    assert up.decide(+1) == "held" and up.undefined < 0.05
    down = stats.spearman_interval(x, -x)
    assert down.low == pytest.approx(-1) and down.decide(-1) == "held"


def test_a_perfect_ordering_of_four_seeds_is_untested():
    """Under independence a perfect ordering of 4 units has probability 2/4! = 0.083 (either
    direction): its point interval [-1, -1] must not decide; of 5 units, 2/5! = 0.017, it does.
    Runs pooled by seed count seeds, not runs."""
    four = stats.spearman_interval([1.0, 2, 3, 4], [0.9, 0.8, 0.7, 0.6])
    assert four.value == -1 and (four.low, four.high) == (-math.inf, math.inf)
    assert four.decide(-1) == "untested" and four.decide(+1) == "untested"
    x = np.arange(8.0)
    assert stats.spearman_interval(x, -x, np.repeat(np.arange(4), 2)).decide(-1) == "untested"
    five = stats.spearman_interval(np.arange(5.0), [0.9, 0.8, 0.7, 0.6, 0.5])
    assert five.low == pytest.approx(-1) and five.decide(-1) == "held"
    x = np.arange(10.0)
    assert stats.spearman_interval(x, -x, np.repeat(np.arange(5), 2)).decide(-1) == "held"


def test_spearman_interval_has_width_where_the_jackknife_se_is_zero():
    """Swapped neighbours: every leave-one-out rho is the same, so the jackknife se is 0, but
    resamples spread. The interval was the point 0.83 (decided 'held' from 6 seeds at
    p ~ 0.05 one-sided); it takes its width from the resamples' spread instead."""
    for n in (6, 8, 12):
        x = np.arange(float(n))
        y = x + np.tile([1.0, -1.0], n // 2)
        assert stats._jackknife_se(x, y, np.arange(n), np.ones((1, n)))[0] < 1e-12
        iv = stats.spearman_interval(x, y)
        assert iv.low < iv.value - 0.05 and iv.high > iv.value + 0.01, iv
        assert iv.high < 1
    assert stats.spearman_interval(np.arange(6.0), [1, 0, 3, 2, 5, 4]).decide(+1) == "not held"
    # 12 seeds of such pairs: a correlation of 0.96 still holds.
    assert stats.spearman_interval(np.arange(12.0),
                                   np.arange(12.0) + np.tile([1, -1], 6)).decide(+1) == "held"


def test_a_student_end_from_drawn_resamples_carries_their_error():
    """10 runs are drawn, not enumerated; here the resamples' spread exceeds the jackknife se
    and sets Student's ends, so they move with the RNG seed (the low end from -0.003 to
    +0.011) and must carry a Monte-Carlo error: every seed says 'inconclusive', none 'held'
    or 'not held' by the luck of its draws."""
    x = [0.129603, -0.372527, 0.06183, -0.395678, -1.073637, 0.998479, 0.114614, 1.2612,
         -0.507865, 0.252141]
    y = [0.483466, -1.397186, -0.739602, 0.147127, -0.746686, -0.340853, -0.351695, 0.323432,
         -0.665479, 1.107882]
    ivs = [stats.spearman_interval(x, y, seed=s) for s in range(4)]
    assert all(iv.mc_ends == (True, True) and iv.mc_error > 0 for iv in ivs)
    assert {iv.decide(+1) for iv in ivs} == {"inconclusive"}
    assert min(iv.low for iv in ivs) < 0 < max(iv.low for iv in ivs)


def test_spearman_interval_keeps_its_level_with_a_shared_effect_per_seed():
    """Independent measures, 5 seeds of 7 runs each with an effect shared by a seed's runs (sd
    2): the bootstrap-t alone excluded zero ~10 % of the time (nominal 5 %); joined with the t
    interval on z it must stay near or below 5 %. 250 sets: Monte-Carlo sd ~0.014."""
    rng = np.random.default_rng(5)
    c = np.repeat(np.arange(5), 7)
    rejected = 0
    for _ in range(250):
        x = rng.normal(size=c.size) + 2 * rng.normal(size=5)[c]
        y = rng.normal(size=c.size) + 2 * rng.normal(size=5)[c]
        iv = stats.spearman_interval(x, y, c)
        rejected += iv.low > 0 or iv.high < 0
    assert rejected / 250 <= 0.06, rejected


def test_run_summary_takes_the_final_topology_and_accuracy():
    rows = [{"step": 0, "val_acc": 0.2, "ts_connectivity": 5.0, "ts_redundancy": 1.0},
            {"step": 10, "val_acc": 0.6, "ts_connectivity": 3.0, "ts_redundancy": 0.5},
            {"step": 20, "val_acc": 0.5, "ts_connectivity": 2.0, "ts_redundancy": 0.25}]
    s = stats.run_summary(rows, 0.55)
    assert s["ts_connectivity"] == 2.0 and s["ts_redundancy"] == 0.25
    assert "ts_stability" not in s  # not recorded, not invented
    assert s["final_acc"] == 0.5 and s["steps_to_target"] == 10 and s["reached"] == 1.0
    assert s["auc"] == pytest.approx((0.4 + 0.55) * 10 / 20)  # trapezoids / span


def test_resamples_with_rho_but_no_jackknife_se_are_kept():
    """A measure nonzero in two seeds only (H1 bars are rare): resamples holding one of them
    once have a rho, but leaving that seed out leaves the measure constant, so no jackknife se.
    They are standardised by the sample's se, as resamples without spread are, not dropped
    (which cut one tail selectively); ``undefined`` counts only the resamples without rho."""
    c = np.repeat(np.arange(5), 3)
    x = np.zeros(15)
    x[[0, 4]] = [1.0, 2.0]
    y = np.random.default_rng(3).normal(size=15)
    iv = stats.spearman_interval(x, y, c)
    counts, w, exact = stats.resamples(5, 1, 0)
    assert exact
    no_rho, no_se = 0.0, 0.0
    member = c
    se = stats._jackknife_se(x, y, member, counts)
    for k, (cnt, wt) in enumerate(zip(counts, w)):
        runs = np.concatenate([np.flatnonzero(c == s) for s in range(5)
                               for _ in range(int(cnt[s]))])
        rho = stats.spearman(x[runs], y[runs])
        no_rho += wt * math.isnan(rho)
        no_se += wt * (not math.isnan(rho) and not math.isfinite(se[k]))
    assert no_se > 0.05  # the case is exercised
    assert iv.undefined == pytest.approx(no_rho, abs=1e-12)
    assert math.isfinite(iv.low) and math.isfinite(iv.high)


def test_a_correlation_carried_by_one_seed_has_no_interval():
    """Leaving out the one seed where the measure varies leaves it constant: the sample has no
    jackknife se and no interval (a correlation from one seed's runs shows nothing)."""
    c = np.repeat(np.arange(5), 3)
    x = np.zeros(15)
    x[[0, 1]] = [1.0, 2.0]
    iv = stats.spearman_interval(x, np.linspace(0.9, 0.5, 15), c)
    assert math.isfinite(iv.value) and math.isnan(iv.low) and iv.decide(-1) == "untested"
