"""The benchmark harness runs end to end (tiny sizes; no timing assertions: speed is
proven by `tf-rmsprop-ops bench`, recorded in BENCHMARKS.md)."""
import json
import re

import numpy as np
import pytest

from tf_rmsprop_ops.benchmark import dense, roofline, runner, sparse


def test_quick_bench_writes_a_complete_report(tmp_path, capsys):
    from tf_rmsprop_ops import cli
    out = tmp_path / "bench.json"
    cli.main(["bench", "--quick", "--variants", "plain,centered_momentum", "--sizes", "4K",
              "--json", str(out)])
    report = json.loads(out.read_text())
    assert "keras" in report["software"] and report["machine"]
    kinds = [r["kind"] for r in report["results"]]
    assert kinds == ["dense", "dense", "sparse"]
    for r in report["results"]:
        assert r["ms"]["rmspropx"] > 0 and r["roofline_ms"] > 0
        assert r["ms"]["rmspropx_xla"] > 0
    out = capsys.readouterr().out
    assert "roofline" in out
    assert "NOT measurements" in out  # --quick says its figures are not measurements
    assert re.search(r"\d+\.\d{3} ms \d+%", out)  # our cells carry units: ms and %


def test_bench_passes_multi_output_fusion_to_its_cases(tmp_path, monkeypatch):
    from tf_rmsprop_ops import cli
    monkeypatch.setenv("XLA_FLAGS", "--xla_dump_hlo_as_text")
    out = tmp_path / "bench.json"
    cli.main(["bench", "--quick", "--no-sparse", "--variants", "momentum", "--sizes", "4K",
              "--xla-multi-output-fusion", "--json", str(out)])
    report = json.loads(out.read_text())
    assert report["xla_flags"] == f"--xla_dump_hlo_as_text {runner.MULTI_OUTPUT_FUSION_FLAG}"
    assert report["results"][0]["ms"]["rmspropx_xla"] > 0


@pytest.mark.parametrize("variant, moved", [("plain", (3, 2)), ("momentum", (4, 3)),
                                            ("centered", (4, 3)),
                                            ("centered_momentum", (5, 4))])
def test_roofline_counts_the_arrays_the_update_moves(variant, moved):
    assert dense.arrays_moved(variant) == moved
    assert roofline.probe_ms(4096 * 4, *moved, threads=1, repeats=1) > 0


def test_random_row_probe_runs_on_batches_of_any_size():
    ms = roofline.random_rows_ms(1000, 8, [np.array([5, 1, 999]), np.arange(0, 1000, 7)],
                                 num_tables=3, threads=2, repeats=2)
    assert ms > 0


def test_first_appearances_keep_the_kernel_order():
    assert sparse._first_appearances(np.array([7, 3, 7, 1, 3])).tolist() == [7, 3, 1]


def test_sparse_indices_have_the_requested_duplication():
    idx = sparse.make_indices(np.random.default_rng(), 10_000, 1000, duplicate_fraction=0.1)
    assert idx.size == 1000 and np.unique(idx).size == 900


def test_denormal_case_times_both_inputs_and_reports_flushing(tmp_path, capsys):
    from tf_rmsprop_ops import cli
    cli.main(["bench", "--quick", "--denormals", "--sizes", "4K",
              "--json", str(tmp_path / "d.json")])
    (result,) = json.loads((tmp_path / "d.json").read_text())["results"]
    assert set(result["ms"]) == {"rmspropx", "eager_normal", "eager_subnormal",
                                 "function_subnormal", "jit_normal", "jit_subnormal",
                                 "sparse_normal", "sparse_subnormal"}
    assert all(ms > 0 for ms in result["ms"].values())
    # TensorFlow runs CPU kernels with flush-to-zero, and XLA:CPU's loops flush too (what
    # README, BENCHMARKS and design.md say): no subnormal survives an update.
    assert result["flushed"] == {"eager_subnormal": True, "function_subnormal": True,
                                 "jit_subnormal": True, "sparse_subnormal": True}
    assert "flushed to zero" in capsys.readouterr().out


def test_sizes_parse():
    assert runner.parse_size("1M") == 2**20 and runner.parse_size("64K") == 65536
    assert runner.parse_size("1000") == 1000


def test_models_case_reports_the_call_floor(tmp_path, capsys):
    """`bench --models mlp`: every competitor, the roofline and the call floor (the same
    step over 80 variables of 256 elements), and the table's line above the floor."""
    from tf_rmsprop_ops import cli
    out = tmp_path / "bench.json"
    cli.main(["bench", "--models", "mlp", "--repeats", "3", "--json", str(out)])
    (r,) = json.loads(out.read_text())["results"]
    assert r["kind"] == "models" and r["tensors"] == 80 and r["params"] == 40 * (256 * 256 + 256)
    assert set(r["ms"]) == {"rmspropx", "rmspropx_per_slot", "rmspropx_per_var",
                            "rmspropx_jit", "rmspropx_8bit", "tf_raw", "keras", "keras_jit"}
    assert 0 < r["floor_per_slot_ms"]
    assert all(ms > 0 for ms in r["ms"].values()) and r["roofline_ms"] > 0
    # 80 variables of 256 elements against 2.6M parameters: the floor is below the step.
    assert 0 < r["floor_ms"] < r["ms"]["rmspropx"]
    text = capsys.readouterr().out
    assert "call floor (the same RMSpropX step on 80 variables of 256 elements)" in text
    assert re.search(r"above it: rmspropx \d+\.\d{3} ms \((\d+%|>bound\?) of the roofline\)", text)
    # TensorFlow's call over the same 80 variables, 2 flat state buffers (ms, mom) and 80
    # gradients, no update.
    assert r["tf_call_inputs"] == 162 and 0 < r["tf_call_ms"]
    assert re.search(r"mlp: 80 tensors, 2\.6M params: TensorFlow's call over the step's 162 "
                     r"inputs \(IdentityN, no update\) \d+\.\d{3} ms\. 85% of the roofline "
                     r"allows \d+\.\d{3} ms", text)


def test_models_target_line_derives_what_the_update_needs():
    """85% of a 1.7 ms roofline allows 2.0 ms; after a 0.5 ms call 1.5 ms are left, so the
    update would need 1.7 / 1.5 of its bound; 2x a 6 ms Keras jit step allows 3 ms (2.5 left:
    68%); a call longer than what a target allows says so."""
    r = dict(kind="models", model="mlp", tensors=80, params=2_600_000, roofline_ms=1.7,
             tf_call_ms=0.5, tf_call_inputs=320, ms={"rmspropx": 3.0, "keras_jit": 6.0})
    line = runner.models_target_line(r)
    assert "85% of the roofline allows 2.000 ms, 1.500 ms after the call: needs the update " \
           "at 113% of the roofline" in line
    assert "2x Keras 3 jit allows 3.000 ms, 2.500 ms after the call: needs the update at 68%" \
           in line
    r.update(model="resnet50", tf_call_ms=2.5)
    line = runner.models_target_line(r)
    assert "1.8x Keras 3 jit allows 3.333 ms, 0.833 ms after the call" in line
    assert "85% of the roofline allows 2.000 ms, -0.500 ms after the call: the call alone " \
           "takes longer" in line


def test_state8_case_times_8bit_and_32bit_state(tmp_path, capsys):
    from tf_rmsprop_ops import cli
    cli.main(["bench", "--quick", "--state8", "--sizes", "64K",
              "--json", str(tmp_path / "s.json")])
    (result,) = json.loads((tmp_path / "s.json").read_text())["results"]
    assert set(result["ms"]) == {"rmspropx", "dense_32bit", "sparse_8bit", "sparse_32bit"}
    assert all(ms > 0 for ms in result["ms"].values()) and result["roofline_ms"] > 0
    assert result["state_bytes_per_element"] == {"8": 2 * (1 + 4 / 256), "32": 8}
    assert "25.4% of float32's 8" in capsys.readouterr().out


@pytest.mark.slow  # ~45 s: 18 models built and traced
def test_keras_fit_case_reports_each_optimizers_share_of_the_step(tmp_path, capsys):
    """--keras-fit --quick runs every competitor (SGD baselines included) on the three
    models, and the share lines are the step minus SGD's with the same jit setting."""
    from tf_rmsprop_ops import cli
    from tf_rmsprop_ops.benchmark import keras_fit
    out = tmp_path / "fit.json"
    cli.main(["bench", "--keras-fit", "--quick", "--repeats", "1", "--json", str(out)])
    results = json.loads(out.read_text())["results"]
    assert [r["model"] for r in results] == ["embedding", "mlp", "resnet50"]
    assert results[0]["optimizer_share_ms"] == {}  # SGD densifies the embedding: no baseline
    for r in results:
        assert set(r["ms"]) == set(keras_fit.COMPETITORS)
        if r["model"] == "embedding":
            continue
        share = r["optimizer_share_ms"]
        for name, base in keras_fit.SHARES.items():
            if r["ms"][name] is not None and r["ms"][base] is not None:
                assert share[name] == pytest.approx(r["ms"][name] - r["ms"][base])
    text = capsys.readouterr().out
    assert "the optimizer's share of a step (the step minus the same step with Keras' plain " \
           "SGD" in text


def test_keras_fit_share_line_compares_ours_with_keras():
    r = dict(kind="keras_fit", model="mlp", params=10, batch=2, tensors=6,
             ms=dict(rmspropx=5.0, keras=7.0, sgd=4.0, rmspropx_jit=3.0, keras_jit=2.5,
                     sgd_jit=2.0))
    from tf_rmsprop_ops.benchmark import keras_fit
    r["optimizer_share_ms"] = keras_fit.optimizer_share(r["ms"])
    line = runner.keras_fit_share_line(r)
    assert "without XLA: rmspropx 1.000 ms, Keras RMSprop 3.000 ms (Keras' share / ours " \
           "3.00x)" in line
    assert "with jit_compile: rmspropx 1.000 ms, Keras RMSprop 0.500 ms (Keras' share / " \
           "ours 0.50x)" in line


def _dense_result(ms, roof):
    return dict(kind="dense", n=1 << 20, dtype="float32", variant="momentum",
                ms=dict(rmspropx=ms, tf_raw=2 * ms), roofline_ms=roof)


def test_a_time_below_the_roofline_is_measured_again_then_flagged(monkeypatch, capsys):
    """Issue 27: a fraction above 100% (the probe measured no bound in that run) is never
    printed as a result: the case runs again (up to BOUND_RETRIES times), and a time still
    below the probe's is flagged in the table."""
    import argparse
    runs = iter([_dense_result(1.0, 1.6), _dense_result(2.0, 1.5)])
    monkeypatch.setattr(runner, "case_specs", lambda args: [dict(kind="dense")])
    monkeypatch.setattr(runner, "run_case", lambda spec: next(runs))
    args = argparse.Namespace(quick=False, xla_multi_output_fusion=False, json=None, plot=None,
                              threads=2)
    report = runner.main(args)
    (r,) = report["results"]
    assert r["ms"]["rmspropx"] == 2.0 and r["bound_retries"] == 1
    out = capsys.readouterr().out
    assert "faster than the roofline probe" in out and "2.000 ms 75%" in out
    assert "160%" not in out
    # Still below after the retries: the cell says so, no fraction.
    text = runner.table([_dense_result(1.0, 1.6)])
    assert "1.000 ms >bound?" in text and "160%" not in text
    assert "no fraction is printed" in text
    assert runner.percent(1.5, 2.0) == "75%"
