"""Agreement of every miner + loss on the device with a float64 CPU reference, in float32 and bfloat16.

    python benchmarks/agreement.py [--device cpu|cuda] [--sizes 80 1000] [--dim 512] [--k 5]

For each case of ``pair_math.py`` (miner + loss, same parameters), each batch size and each
precision, embeddings (class centres plus noise, L2-normalised) are rounded to the precision, then
S = E Eᵀ, mining, the loss and its gradient with respect to E are computed (1) on the CPU in float64
from the rounded embeddings: the reference; (2) on the CPU in the precision; (3) on ``--device`` in
the precision when it is not the CPU. bfloat16 is computed as autocast leaves it: S in bfloat16, which
the miners and losses promote to float32. Each row compares one device and precision with the
reference: the loss's absolute and relative error; the gradient's largest absolute error, that error
relative to the gradient's largest magnitude (max rel), and the norm of the error relative to the
gradient's norm (rel); and the pairs whose mined positive/negative mask differs. CPU and CUDA agree
when both are within the stated tolerance of the same reference. Without CUDA this compares the CPU
with itself (float64 vs float32 / bfloat16).

Tolerances (PASS when loss rel, gradient rel and the share of flipped pairs among the B² are within):
  float32:  loss rel ≤ 1e-5, gradient rel ≤ 1e-4, flipped ≤ 0.01 % (rounding at 1e-7 moves only pairs
            that lie on a mining threshold; measured on a CPU: ≤ 1.4e-7, ≤ 2.7e-6, none)
  bfloat16: loss rel ≤ 1e-2, gradient rel ≤ 0.15, flipped ≤ 0.5 % (S rounded to 8 bits moves by up to
            4e-3 and flips the pairs that close to a threshold; one flipped pair changes its anchor's
            gradient by one pair's term, about 5 % of the gradient's norm for triplet and lifted at
            B = 80, whose anchors keep few pairs; measured on a CPU: ≤ 1.3e-3, ≤ 0.052, ≤ 0.06 %)
Prints a table and writes JSON (with the peak CUDA memory of the run on CUDA).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import add_batch_arguments, header, write_json  # noqa: E402
from pair_math import DMLTUNE_CASES  # noqa: E402

from dmltune.pairs import get_loss, get_miner  # noqa: E402

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16}
TOLERANCES = {"fp32": {"loss_rel": 1e-5, "grad_rel": 1e-4, "flipped": 1e-4},
              "bf16": {"loss_rel": 1e-2, "grad_rel": 0.15, "flipped": 5e-3}}


def make_embeddings(b: int, dim: int, k: int, seed: int = 0):
    """L2-normalised class centres plus noise (classes of ``k``), and their labels, on the CPU."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(b // k).repeat_interleave(k)
    centres = torch.randn(b // k, dim, generator=g)
    return F.normalize(centres[labels] + 3.0 * torch.randn(b, dim, generator=g), dim=1), labels


def compute(case, emb, labels, device, dtype):
    """Loss, gradient of the embeddings and mined masks of one case, on ``device`` in ``dtype``."""
    _, miner_name, miner_params, loss_name, loss_params = case
    miner, loss_fn = get_miner(miner_name, **miner_params), get_loss(loss_name, **loss_params)
    x = emb.detach().to(device=device, dtype=dtype).clone().requires_grad_(True)
    sim = x @ x.T
    mined = miner(sim, labels.to(device))
    loss = loss_fn(sim, labels.to(device), mined, progress=0.5)
    loss.backward()
    return (loss.detach().double().cpu(), x.grad.double().cpu(), mined.pos.cpu(), mined.neg.cpu())


def compare(got, ref) -> dict:
    """Errors of ``got`` against the reference (both from ``compute``)."""
    loss, grad, pos, neg = got
    ref_loss, ref_grad, ref_pos, ref_neg = ref
    loss_abs = float((loss - ref_loss).abs())
    grad_abs = float((grad - ref_grad).abs().max())
    grad_rel = float((grad - ref_grad).norm() / ref_grad.norm().clamp_min(1e-30))
    flipped = int((pos != ref_pos).sum() + (neg != ref_neg).sum())
    return {"loss": float(loss), "loss_ref": float(ref_loss), "loss_abs": loss_abs,
            "loss_rel": loss_abs / max(float(ref_loss.abs()), 1e-12), "grad_abs": grad_abs,
            "grad_max_rel": grad_abs / max(float(ref_grad.abs().max()), 1e-30), "grad_rel": grad_rel,
            "flipped_pairs": flipped, "flipped": flipped / pos.numel()}


def judge(row: dict) -> dict:
    """The row with its PASS/FAIL against its precision's tolerances."""
    tol = TOLERANCES[row["precision"]]
    ok = all(row[key] <= limit for key, limit in tol.items())  # a NaN error fails
    return {**row, "result": "PASS" if ok else "FAIL"}


def run(args) -> list[dict]:
    """Every case × size × precision × device, each compared with the float64 CPU reference."""
    devices = ["cpu"] + ([args.device] if args.device != "cpu" else [])
    rows = []
    for b in args.sizes:
        emb, labels = make_embeddings(b, args.dim, args.k)
        for case in DMLTUNE_CASES:
            for precision, dtype in PRECISIONS.items():
                rounded = emb.to(dtype)
                ref = compute(case, rounded, labels, "cpu", torch.float64)
                for device in devices:
                    got = compute(case, rounded, labels, device, dtype)
                    rows.append(judge({"case": case[0], "B": b, "precision": precision, "device": device,
                                       **compare(got, ref)}))
    return rows


def main(argv=None) -> int:
    """Run every comparison, print the table and the verdict, write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_batch_arguments(parser)
    parser.add_argument("--out", default="benchmarks/results/agreement.json")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    rows = run(args)
    print(f"{header(device)}, d = {args.dim}, K = {args.k}; errors against a float64 CPU reference")
    print(f"{'case':<30} {'B':>5} {'prec':>5} {'device':>6} {'loss rel':>9} {'grad abs':>9} {'max rel':>9} "
          f"{'grad rel':>9} {'flipped':>8} {'result':>6}")
    for r in rows:
        print(f"{r['case']:<30} {r['B']:>5} {r['precision']:>5} {r['device']:>6} {r['loss_rel']:>9.1e} "
              f"{r['grad_abs']:>9.1e} {r['grad_max_rel']:>9.1e} {r['grad_rel']:>9.1e} {r['flipped_pairs']:>8} "
              f"{r['result']:>6}")
    for precision, tol in TOLERANCES.items():
        print(f"tolerance {precision}: loss rel ≤ {tol['loss_rel']:g}, gradient rel ≤ {tol['grad_rel']:g}, "
              f"flipped pairs ≤ {100 * tol['flipped']:g} % of B²")
    failed = [r for r in rows if r["result"] == "FAIL"]
    on_cuda = device.type == "cuda"
    where = "cpu" + (f" and {args.device}" if args.device != "cpu" else "")
    text = f"every miner + loss on {where} within tolerance of the float64 CPU reference (fp32, bf16)"
    print(f"{'FAIL' if failed else 'PASS'}: {text} ({len(rows) - len(failed)} of {len(rows)} rows)")
    extra = {"peak_cuda_gib": torch.cuda.max_memory_allocated() / 2**30} if on_cuda else {}
    write_json(args.out, "agreement", device, rows, dim=args.dim, k=args.k, tolerances=TOLERANCES,
               targets={text: not failed}, **extra)
    return 0


if __name__ == "__main__":
    sys.exit(main())
