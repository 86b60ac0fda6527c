"""How far a classifier inversion's reconstructions look like the people they were made for.

Shared by the harness suite (``benchmarks/suites/face_inversion.py``) and the lab's
``classifier-inversion`` experiments (``attacker/lab/classifier_inversion_runner.py``). Neither
measure is the attacked model's own verdict (which is what the attack optimised):

* SSIM and PSNR (scikit-image, data range 1) of each reconstruction to its person's mean training
  face, beside the same to the other people's mean faces, and how often the person's own mean face
  is the most similar of all (identification by SSIM; chance 1 / people);
* where a separately trained recogniser of another architecture is at hand (``evaluator``, never
  seen by the attack): its top-1 and top-5 over the people (chance 1/40 and 5/40 on AT&T).
"""

from __future__ import annotations

import numpy as np


def mean_faces(dataset) -> np.ndarray:
    """Each class's mean training image (classes, C, H, W) in [0, 1]."""
    from models import to_tensor

    x = to_tensor(dataset.x_train).numpy()
    return np.stack([x[dataset.y_train == c].mean(0) for c in range(dataset.num_classes)])


def everyone_face(dataset) -> np.ndarray:
    """The mean of all training images (1, C, H, W): the baseline, what an attacker who knows faces
    but nobody in particular would draw."""
    from models import to_tensor

    return to_tensor(dataset.x_train).numpy().mean(0, keepdims=True)


def similarity(images: np.ndarray, means: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(SSIM, PSNR), each (images, people): every image (N, 1, H, W) against every mean face."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    ssim = np.array([[structural_similarity(img[0], m[0], data_range=1.0) for m in means] for img in images])
    psnr = np.array([[peak_signal_noise_ratio(m[0], img[0], data_range=1.0) for m in means] for img in images])
    return ssim, psnr


def face_metrics(images: np.ndarray, people: np.ndarray, means: np.ndarray, evaluator=None, target=None,
                 scores: tuple[np.ndarray, np.ndarray] | None = None) -> dict:
    """SSIM/PSNR of each image (N, 1, H, W) to its person's mean face and to the others', SSIM
    identification, the evaluator's top-1 / top-5 (with an evaluator) and the target's top-1 (with
    the target). ``scores``: :func:`similarity`'s result, when the caller has it already."""
    import torch

    ssim, psnr = similarity(images, means) if scores is None else scores
    rows = np.arange(len(images))
    others = np.ones_like(ssim, dtype=bool)
    others[rows, people] = False
    out = {"ssim_own": float(ssim[rows, people].mean()), "ssim_others": float(ssim[others].mean()),
           "psnr_own": float(psnr[rows, people].mean()), "psnr_others": float(psnr[others].mean()),
           "ssim_identified": float((ssim.argmax(1) == people).mean())}
    with torch.no_grad():
        x = torch.from_numpy(np.asarray(images, dtype=np.float32))
        if evaluator is not None:
            top5 = evaluator(x).topk(5, dim=1).indices.numpy()
            out["eval_top1"] = float((top5[:, 0] == people).mean())
            out["eval_top5"] = float((top5 == people[:, None]).any(1).mean())
        if target is not None:
            out["target_top1"] = float((target(x).argmax(1).numpy() == people).mean())
    return out
