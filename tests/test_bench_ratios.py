"""The benchmark's "matrix timed" ratio: a peer fastest on a precomputed matrix is charged for the
matrix, unless its own run on the points was faster still."""
import importlib.util
import os

import pytest

_spec = importlib.util.spec_from_file_location(
    "bench_run", os.path.join(os.path.dirname(__file__), "..", "benchmarks", "run.py"))
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def record(matrix_s, build_s, points_s=None):
    alternatives = {"matrix": dict(median_s=matrix_s, correct=True)}
    if points_s is not None:
        alternatives["points"] = dict(median_s=points_s, correct=True)
    return dict(median_s=matrix_s, matrix_precompute_s=build_s, alternatives=alternatives)


def test_matrix_cost_is_added_when_the_points_run_is_slower():
    assert bench.incl_matrix_ratio(record(2.0, 1.0, points_s=5.0), 0.5) == pytest.approx(6.0)


def test_the_points_run_counts_when_faster_than_matrix_plus_its_cost():
    # gudhi-sklearn on the H200 host at (64, 4096, 64): 26.7 ms on the matrix, 100.3 ms to build
    # it, 41.5 ms on the points; ours 39.05 ms.
    r = record(26.7e-3, 100.3e-3, points_s=41.5e-3)
    assert bench.incl_matrix_ratio(r, 39.05e-3) == pytest.approx(41.5 / 39.05)


def test_without_a_points_run_the_matrix_cost_is_added():
    assert bench.incl_matrix_ratio(record(2.0, 1.0), 1.5) == pytest.approx(2.0)


@pytest.mark.parametrize("argv,stem", [
    ([], "dev"),
    (["--isa", "avx2"], "dev-avx2"),
    (["--quick"], "dev-quick"),
    (["--gpu-configs", "--impls", "ours,ripser"], "dev-gpu-configs-impls"),
    (["--configs", "16,768,64"], "dev-configs"),
    (["--impls", "ours"], "dev-impls"),
    (["--threads", "1"], "dev-1t"),
    (["--isa", "baseline", "--quick", "--threads", "2"], "dev-baseline-quick-2t"),
])
def test_a_partial_run_never_takes_the_full_suites_file_name(argv, stem):
    args = bench.build_parser().parse_args(argv)  # main's own parser
    assert bench.result_stem("dev", args.isa, args) == stem


def test_a_points_run_that_failed_its_check_does_not_count():
    """The points run whose diagrams failed the check is no time to compare against."""
    r = record(2.0, 1.0, points_s=0.5)
    r["alternatives"]["points"]["correct"] = False
    assert bench.incl_matrix_ratio(r, 1.0) == pytest.approx(3.0)


def test_an_unchecked_points_run_counts_against_us():
    """Files from before the per-kind check (the H200's) carry none: their points run still
    counts, since it can only lower our ratio."""
    r = record(2.0, 1.0, points_s=0.5)
    del r["alternatives"]["points"]["correct"]
    assert bench.incl_matrix_ratio(r, 1.0) == pytest.approx(0.5)
