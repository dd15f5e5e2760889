"""The pretraining loop (``fastmae/cli/engine.py``) on the CPU: host syncs counted per iteration,
a non-finite loss injected at a chosen iteration, the optimizer and compile wiring, the prefetcher."""

import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

import fastmae._validate
import fastmae.data as fd
from fastmae.cli import config, engine, main, parse_args, pretrain
from fastmae.cli.distributed import DistInfo
from sync_counter import SyncCounter

pytestmark = pytest.mark.usefixtures("cpu_default_device", "one_thread")  # see tests/conftest.py

# 32 images at batch 8: 4 iterations an epoch; --print-freq 2 reads the device after iterations 1 and 3.
ITERS, PRINT_FREQ = 4, 2


def base_args(out, *extra):
    return ["pretrain", "--model", "mae_vit_micro_patch4", "--input-size", "16", "--num-images", "32",
            "--batch-size", "8", "--epochs", "2", "--warmup-epochs", "1", "--blr", "2e-3", "--backend",
            "torch", "--device", "cpu", "--print-freq", str(PRINT_FREQ), "--output-dir", str(out), *extra]


def run(capsys, argv):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


class _CountingLoader:
    """A loader that starts a new iteration in ``counter`` at each batch it hands out, and knows
    its batches' host-side tensors."""

    def __init__(self, loader, counter_box, host):
        self._loader, self._box, self._host = loader, counter_box, host

    def __getattr__(self, name):
        return getattr(self._loader, name)

    def __len__(self):
        return len(self._loader)

    def __iter__(self):
        # The loader's own work (with --num-workers 0, on the CPU: decoding and cropping, in this
        # process) is host work on host data: not counted.
        batches, i = iter(self._loader), 0
        while True:
            with self._box[0].paused():
                batch = next(batches, None)
            if batch is None:
                return
            self._host.add(batch.skipped.data_ptr())
            if i:
                self._box[0].new_iteration()
            i += 1
            yield batch


def _count_syncs(monkeypatch, capsys, tmp_path, impl, extra=()):
    """Run two epochs of the real loop under a :class:`SyncCounter`: its per-iteration counts."""
    counters, optimizers = [], []
    real_make_optimizer, real_epoch = pretrain.make_optimizer, pretrain.train_one_epoch

    def make_optimizer(model, run, impl_=None):
        optimizers.append(real_make_optimizer(model, run, impl))
        return optimizers[-1]

    def train_one_epoch(model, loader, optimizer, *args, **kwargs):
        host = set()

        def host_tensors():
            steps = {s["step"].data_ptr() for s in optimizer.state.values()
                     if "step" in s and not optimizer.param_groups[0]["capturable"]
                     and not optimizer.param_groups[0]["fused"]}
            return host | steps
        box = [SyncCounter(host_tensors)]
        box_now[0] = box[0]
        with box[0]:
            stats = real_epoch(model, _CountingLoader(loader, box, host), optimizer, *args, **kwargs)
        counters.append(box[0])
        return stats

    def to_model_input(*args, **kwargs):
        # On the CPU the torch backend's resized_crop reads its ragged table (host data) to loop
        # over the crops; on CUDA the Triton kernel reads nothing back (the GPU report checks it
        # under torch.cuda.set_sync_debug_mode).
        with box_now[0].paused():
            return real_input(*args, **kwargs)

    # The ops check index values where reading them costs nothing: CPU tensors. On CUDA they do not
    # (unless FASTMAE_CHECK_INDICES=1): the loop is counted with the CUDA rule.
    monkeypatch.setattr(fastmae._validate, "_reads_values",
                        lambda t: os.environ.get("FASTMAE_CHECK_INDICES") == "1")
    monkeypatch.delenv("FASTMAE_CHECK_INDICES", raising=False)
    box_now = [None]
    real_input = fd.prefetch.to_model_input
    monkeypatch.setattr(fd.prefetch, "to_model_input", to_model_input)
    monkeypatch.setattr(pretrain, "make_optimizer", make_optimizer)
    monkeypatch.setattr(pretrain, "train_one_epoch", train_one_epoch)
    code, _, err = run(capsys, base_args(tmp_path / "run", *extra))
    assert code == 0, err
    assert [len(c.per_iter) for c in counters] == [ITERS, ITERS]
    return [c.per_iter for c in counters]


def _reads(step):
    return (step + 1) % PRINT_FREQ == 0 or step + 1 == ITERS


@pytest.mark.parametrize("amp", ["off", "fp16"])
def test_no_sync_in_a_step_that_prints_nothing(tmp_path, capsys, monkeypatch, amp):
    # The fused AdamW, CUDA's default (here on the CPU), and with fp16 the GradScaler.
    for per_iter in _count_syncs(monkeypatch, capsys, tmp_path, "fused", ["--amp", amp]):
        for step, calls in enumerate(per_iter):
            # A read: one Tensor.tolist() of the iterations' record since the last read.
            assert calls == (["Tensor.tolist"] if _reads(step) else []), (step, calls)


def test_foreach_adamw_on_the_cpu_reads_found_inf_on_the_host(tmp_path, capsys, monkeypatch):
    # The CPU's default AdamW (foreach) cannot take found_inf: on the CPU the loop reads it (a CPU
    # tensor: nothing to wait for) and steps or not; one read per optimizer step, nothing else.
    for per_iter in _count_syncs(monkeypatch, capsys, tmp_path, "foreach"):
        for step, calls in enumerate(per_iter):
            want = ["aten._local_scalar_dense.default"] + (["Tensor.tolist"] if _reads(step) else [])
            assert calls == want, (step, calls)


def test_sync_counter_sees_a_loss_item(tmp_path, capsys, monkeypatch):
    # The instrument itself: the old loop's loss.item() in every step is seen in every step.
    real = pretrain._build_model

    def build(run):
        model = real(run)
        model.register_forward_hook(lambda m, inp, out: (out[0].item(), out)[1])
        return model
    monkeypatch.setattr(pretrain, "_build_model", build)
    for per_iter in _count_syncs(monkeypatch, capsys, tmp_path, "fused"):
        for step, calls in enumerate(per_iter):
            assert calls.count("aten._local_scalar_dense.default") == 1, (step, calls)


def _inject_nan(monkeypatch, at_call, into="loss"):
    """The model's ``at_call``-th forward (counting from 0, over the run) returns a NaN loss whose
    gradients are the finite loss's (only the loss value tells that the step is bad), or with
    ``into="grads"`` a finite loss whose gradients are NaN."""
    real, calls = pretrain._build_model, [0]

    def hook(module, inputs, out):
        calls[0] += 1
        if calls[0] - 1 != at_call:
            return out
        loss = out[0]
        if into == "grads":
            loss = loss * 1.0
            loss.register_hook(lambda grad: grad * float("nan"))
            return (loss, *out[1:])
        return (loss + (torch.full_like(loss, float("nan")) - loss).detach(), *out[1:])

    def build(run):
        model = real(run)
        model.register_forward_hook(hook)
        return model
    monkeypatch.setattr(pretrain, "_build_model", build)


def _made_optimizers(monkeypatch, impl):
    """The optimizers ``fastmae pretrain`` makes, each an AdamW of ``impl`` ("foreach" or "fused")."""
    optimizers, real_make_optimizer = [], pretrain.make_optimizer

    def make_optimizer(model, run, impl_=None):
        optimizers.append(real_make_optimizer(model, run, impl))
        return optimizers[-1]
    monkeypatch.setattr(pretrain, "make_optimizer", make_optimizer)
    return optimizers


def _snapshot_each_step(setattr_, snapshots):
    """Append a snapshot of the optimizer before each of the loop's optimizer steps (dropped or not)."""
    real = engine.step_unless

    def step_unless(optimizer, found_inf, **kwargs):
        snapshots.append(_snapshot(optimizer))
        return real(optimizer, found_inf, **kwargs)
    setattr_(engine, "step_unless", step_unless)


def _snapshot(optimizer):
    """Every parameter and optimizer state tensor, cloned, in a fixed order."""
    out = []
    for group in optimizer.param_groups:
        for p in group["params"]:
            out.append(p.detach().clone())
            out += [v.clone() for _, v in sorted(optimizer.state[p].items()) if torch.is_tensor(v)]
    return out


@pytest.mark.parametrize("impl,amp", [("foreach", "off"), ("fused", "off"), ("foreach", "fp16"),
                                      ("fused", "fp16")])
def test_non_finite_loss_drops_its_update_and_stops_at_the_next_read(tmp_path, capsys, monkeypatch,
                                                                      impl, amp):
    bad_epoch, bad_iter = 1, 2  # the read after iteration 3 finds it; the one after 1 printed a line
    _inject_nan(monkeypatch, bad_epoch * ITERS + bad_iter)
    before_step, optimizers = [], _made_optimizers(monkeypatch, impl)
    _snapshot_each_step(monkeypatch.setattr, before_step)
    out = tmp_path / "run"
    code, stdout, err = run(capsys, base_args(out, "--amp", amp))
    assert code == 1
    error = err.strip().splitlines()[-1]
    assert error == (f"fastmae: error: loss is nan at epoch {bad_epoch}, iteration {bad_iter}; stopped "
                     f"without saving, the last good checkpoint is {out / 'checkpoint-last.pth'}")
    # The steps of the bad iteration and the one after it (before the read) were dropped: the
    # weights and optimizer state are, bitwise, those from before the bad iteration's step.
    bad = bad_epoch * ITERS + bad_iter
    assert len(before_step) == bad + 2
    after = _snapshot(optimizers[0])
    assert all(torch.equal(a, b) for a, b in zip(after, before_step[bad], strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(after, before_step[bad - 1]))  # the step before did train
    # Nothing written after it: epoch 0's checkpoint and log line only, no line of the stopped epoch
    # after the bad iteration.
    assert [json.loads(line)["epoch"] for line in (out / "log.txt").read_text().splitlines()] == [0]
    assert torch.load(out / "checkpoint-last.pth", weights_only=True)["epoch"] == 0
    assert sorted(os.listdir(out)) == ["checkpoint-0.pth", "checkpoint-last.pth", "log.txt"]  # epoch 0's
    shown = f"epoch {bad_epoch + 1}/2"  # progress lines count epochs from 1, of the run's 2
    assert f"{shown} [2/4]" in stdout and f"{shown} [4/4]" not in stdout


@pytest.mark.parametrize("impl", ["foreach", "fused"])
def test_non_finite_gradients_without_a_scaler_stop_the_run_too(tmp_path, capsys, monkeypatch, impl):
    _inject_nan(monkeypatch, ITERS + 2, into="grads")
    before_step, optimizers = [], _made_optimizers(monkeypatch, impl)
    _snapshot_each_step(monkeypatch.setattr, before_step)
    out = tmp_path / "run"
    code, _, err = run(capsys, base_args(out))
    assert code == 1
    assert err.strip().splitlines()[-1].startswith("fastmae: error: the gradients are not finite at epoch 1, "
                                                   "iteration 2 (loss ")
    assert all(torch.equal(a, b) for a, b in zip(_snapshot(optimizers[0]), before_step[ITERS + 2], strict=True))
    assert [json.loads(line)["epoch"] for line in (out / "log.txt").read_text().splitlines()] == [0]


def test_first_of_several_non_finite_iterations_is_named(tmp_path, capsys):
    # --lr 1e30: iteration 0 steps at lr 0 (the warmup's start), iteration 1 at 2.5e29, so the loss is
    # non-finite from iteration 2 on (the weights stay those after iteration 1's step); the read
    # after iteration 3 names the first.
    out = tmp_path / "run"
    code, _, err = run(capsys, base_args(out, "--lr", "1e30", "--epochs", "1", "--print-freq", "4"))
    assert code == 1
    error = err.strip().splitlines()[-1]
    assert error.startswith("fastmae: error: loss is ") and "at epoch 0, iteration 2;" in error


@pytest.mark.parametrize("impl,restore", [("fused", None), ("foreach", None), ("foreach", True)])
def test_step_unless_keeps_weights_and_state_bitwise(impl, restore):
    # restore=True: the copy-and-restore a non-fused optimizer takes on CUDA, run on the CPU.
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1, **pretrain.optimizer_impl(torch.device("cpu"), impl))
    for found, first in ((1.0, True), (0.0, True), (1.0, False)):
        model(torch.randn(2, 4)).sum().backward()
        if found:  # what a dropped step's gradients hold
            model.weight.grad[0, 0] = float("nan")
        before = _snapshot(opt)
        engine.step_unless(opt, torch.tensor(found), restore=restore)
        after = _snapshot(opt)
        if found and first and (impl == "fused" or restore):  # a dropped first step: fresh (zero) state
            fresh = before[:1] + [torch.zeros_like(t) for t in after[1:4]]  # weight; exp_avg(_sq), step
            assert all(torch.equal(a, b) for a, b in zip(after, fresh))
        elif found:
            assert all(torch.equal(a, b) for a, b in zip(after, before, strict=True))
        else:
            assert not torch.equal(after[0], before[0])
        opt.zero_grad()


def test_optimizer_defaults_and_a_resume_across_implementations():
    assert pretrain.optimizer_impl(torch.device("cuda")) == {"fused": True, "foreach": False, "capturable": False}
    assert pretrain.optimizer_impl(torch.device("cpu")) == {"fused": False, "foreach": True, "capturable": False}
    model = torch.nn.Linear(4, 3)
    written = torch.optim.AdamW(model.parameters(), foreach=True)
    model(torch.randn(2, 4)).sum().backward()
    written.step()
    fused = torch.optim.AdamW(model.parameters(), **pretrain.optimizer_impl(torch.device("cpu"), "fused"))
    pretrain.load_optimizer_state(fused, written.state_dict())
    assert fused.param_groups[0]["fused"] and not fused.param_groups[0]["foreach"]
    assert all(torch.equal(fused.state[p]["exp_avg"], written.state[p]["exp_avg"]) for p in model.parameters())


def test_compile_is_off_on_the_cpu_and_its_first_iteration_is_timed(tmp_path, capsys, monkeypatch):
    modes = []
    monkeypatch.setattr(torch, "compile", lambda model, mode=None: modes.append(mode) or model)
    code, stdout, err = run(capsys, base_args(tmp_path / "a", "--epochs", "1"))
    assert code == 0 and modes == [] and "torch.compile: the first iteration took" not in stdout
    code, stdout, err = run(capsys, base_args(tmp_path / "b", "--epochs", "2", "--compile", "--compile-mode",
                                              "reduce-overhead"))
    assert code == 0, err
    assert modes == ["reduce-overhead"]
    timed = [line for line in stdout.splitlines() if line.startswith("torch.compile: the first iteration took")]
    assert len(timed) == 1  # its own line, the first epoch only


@pytest.mark.parametrize("extra,message", [
    (["--compile-mode", "reduce-overhead"],
     "--compile-mode reduce-overhead needs torch.compile, off on cpu unless --compile is passed"),
    (["--no-compile", "--compile-mode", "max-autotune"],
     "--compile-mode max-autotune needs torch.compile, and --no-compile was passed"),
    (["--compile", "--compile-mode", "fastest"], "--compile-mode fastest is not one of this torch's modes: "),
])
def test_compile_mode_errors_are_one_line(tmp_path, capsys, extra, message):
    code, _, err = run(capsys, base_args(tmp_path / "run", *extra))
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith(f"fastmae: error: {message}"), err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("flags", [["--no-compile"], ["--compile", "--compile-mode", "max-autotune"], []])
def test_resume_command_repeats_the_compile_flags(flags):
    args = parse_args(base_args("out", *flags))
    run = config.resolve(args, DistInfo(), torch.device("cpu"), {})
    command = config.resume_command(run, args, "out/checkpoint-last.pth", run.stored_args())
    assert (" ".join(flags) in command) if flags else "compile" not in command, command


@pytest.mark.parametrize("flag", ["--no-norm-pix-loss", "--norm-pix-loss"])
def test_resume_command_repeats_a_norm_pix_flag_that_differs_from_the_checkpoint(flag):
    args = parse_args(base_args("out", flag))
    run = config.resolve(args, DistInfo(), torch.device("cpu"), {})
    stored = {**run.stored_args(), "norm_pix_loss": not run.norm_pix_loss}
    assert run.norm_pix_loss == (flag == "--norm-pix-loss")
    assert f" {flag} " in config.resume_command(run, args, "out/checkpoint-last.pth", stored) + " "


def test_compile_mode_choices_are_torchs():
    args = parse_args(base_args("x", "--compile", "--compile-mode", "max-autotune-no-cudagraphs"))
    assert args.compile_mode == "max-autotune-no-cudagraphs"


def test_prefetcher_yields_to_model_input_on_the_cpu():
    loader = fd.build_loader(fd.ProceduralImages(16, size=24), batch_size=4, size=16, seed=0, num_workers=0)
    loader.set_epoch(0)
    # The torch backend: the test session's Triton interpreter would take minutes.
    expected = [(b.index.clone(), fd.to_model_input(b, "cpu", torch.bfloat16, backend="torch")) for b in loader]
    for overlap in (True, False):
        got = list(fd.Prefetcher(loader, "cpu", torch.bfloat16, backend="torch", overlap=overlap))
        assert len(got) == len(expected) == len(fd.Prefetcher(loader, "cpu"))
        for (batch, imgs), (index, want) in zip(got, expected):
            assert torch.equal(batch.index, index) and torch.equal(imgs, want)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the side stream needs CUDA")
def test_prefetcher_on_a_side_stream_matches_the_compute_stream():
    loader = fd.build_loader(fd.ProceduralImages(64, size=48), batch_size=8, size=32, seed=0, num_workers=0,
                             pin_memory=True)
    loader.set_epoch(0)
    plain = [imgs.clone() for _, imgs in fd.Prefetcher(loader, "cuda", torch.bfloat16, overlap=False)]
    overlapped = []
    for _, imgs in fd.Prefetcher(loader, "cuda", torch.bfloat16):
        overlapped.append((imgs * 1).float())  # used on the compute stream, as a step would
    assert all(torch.equal(a.float(), b) for a, b in zip(plain, overlapped, strict=True))


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank, world_size, port, out):
    """A torchrun-like process; rank 1 alone sees a NaN loss at its 6th forward (epoch 1, iteration 1)."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    real, calls = pretrain._build_model, [0]

    def hook(module, inputs, output):
        calls[0] += 1
        if rank == 1 and calls[0] == 6:
            return (output[0] + (torch.full_like(output[0], float("nan")) - output[0]).detach(), *output[1:])
        return output

    def build(run):
        model = real(run)
        model.register_forward_hook(hook)
        return model
    pretrain._build_model = build
    real_make_optimizer, snapshots = pretrain.make_optimizer, []
    _snapshot_each_step(setattr, snapshots)

    def make_optimizer(model, run, impl=None):
        opt = real_make_optimizer(model, run, impl)
        snapshots.insert(0, opt)
        return opt
    pretrain.make_optimizer = make_optimizer
    # 32 images over 2 ranks at batch 4: 4 iterations an epoch on each.
    args = parse_args(base_args(os.path.join(out, "run" if rank == 0 else f"run-rank{rank}"), "--batch-size", "4"))
    try:
        pretrain.train(args)
        error = None
    except engine.NonFiniteLoss as e:
        error = str(e)
    opt, before = snapshots[0], snapshots[1:]
    torch.save({"error": error, "after": _snapshot(opt), "before_bad": before[ITERS + 1],
                "before_prev": before[ITERS]}, os.path.join(out, f"rank{rank}.pt"))


@pytest.mark.slow  # two processes
def test_non_finite_loss_on_one_rank_drops_the_update_on_every_rank(tmp_path):
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    results = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for r in results:
        assert r["error"].startswith("loss is nan at epoch 1, iteration 1;")
        assert all(torch.equal(a, b) for a, b in zip(r["after"], r["before_bad"], strict=True))
        assert not all(torch.equal(a, b) for a, b in zip(r["after"], r["before_prev"]))
    assert all(torch.equal(a, b) for a, b in zip(results[0]["after"], results[1]["after"], strict=True))
    assert [json.loads(line)["epoch"] for line in (tmp_path / "run" / "log.txt").read_text().splitlines()] == [0]
