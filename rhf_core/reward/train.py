"""Train Lee et al.'s reward model (`python -m rhf_core train-reward`).

Labels, either
- from rated data (`--data SPEC`: RichHF-18K, Rapidata, a folder, anything `open_dataset` reads with an
  alignment score): good = the score reaches `threshold` (0.5 by default: 3 or more on the 1–5 Likert
  scale both real datasets use), held out by the data's dev/test split or, without one, by prompt; or
- in the embedded world: images the generator makes for grammar prompts, judged (good = aligned).

Loss = MSE(r, y) + λ · CE(softmax(r(x, z_j) / T), original) over the prompt and N perturbed
prompts, on good images only. Encoders are frozen, so embeddings are computed once. One run also
trains the λ = 0 ablation and scores the CLIP-score baseline (cosine of the same encoders), and
reports accuracy and AUC on the held-out prompts (ShapesWorld: seen and unseen combinations)."""

from __future__ import annotations

import time
import zlib
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from rhf_core.cache import atomic_savez, cache_dir, cache_key
from rhf_core.data import open_dataset
from rhf_core.dataset import SCORE_NAMES
from rhf_core.errors import RHFError
from rhf_core.judge import JUDGE_VERSION, judge
from rhf_core.perturb import perturbed_prompts
from rhf_core.reward.encoders import load_encoders
from rhf_core.reward.model import RewardConfig, RewardError, RewardHead, RewardModel
from rhf_core.shapes.grammar import prompts_by
from rhf_core.t2i import load_generator


@dataclass
class RewardTrainConfig:
    # Output folder: head.safetensors + config.json + metrics.json (a `lee:DIR` reward).
    out: str = "cache/reward-run"
    # Rated data to learn from: a dataset spec (folder:DIR, richhf18k:DIR, rapidata:DIR_OR_ID, shapes…) whose
    # records carry the `score` below. Empty: judge-labelled generations of the embedded world.
    data: str = ""
    # RichHF-18K only: the Pick-a-Pic folder that holds its prompts and images.
    pickapic: str = ""
    # The score that labels a rated image: good when it is ≥ threshold. Scores are in [0, 1]; 0.5 is 3 on
    # the 1–5 Likert scale of RichHF-18K and Rapidata ("the image matches the prompt acceptably").
    score: str = "alignment"
    threshold: float = 0.5
    # Most rated records read (0 = all), in the data's order.
    max_records: int = 0
    # Share of prompts held out when the data has no dev/test split (by a hash of the prompt, so all the
    # images of one prompt fall on one side).
    heldout_share: float = 0.2
    # Judge-labelled generations (no --data): the pipeline whose samples are judged, samples per prompt,
    # and how many grammar prompts train and are held out.
    generator: str = ""
    per_prompt: int = 6
    train_prompts: int = 300
    heldout_prompts: int = 60
    seed: int = 0
    steps: int = 1500
    batch_size: int = 256
    lr: float = 1e-3
    model: RewardConfig = field(default_factory=RewardConfig)


@dataclass
class Labelled:
    images: np.ndarray  # uint8 N×H×W×3
    prompts: list[str]
    labels: np.ndarray  # float32 (1 = judge says aligned)
    split: list[str]  # train / seen / unseen


def prompt_split(n_train: int, n_heldout: int, seed: int) -> dict[str, list[str]]:
    """Disjoint prompt sets: train and held-out seen prompts, and held-out unseen prompts."""
    rng = np.random.default_rng(seed)
    seen = [p.text for p in prompts_by(unseen=False)]
    unseen = [p.text for p in prompts_by(unseen=True)]
    seen = [seen[i] for i in rng.permutation(len(seen))]
    unseen = [unseen[i] for i in rng.permutation(len(unseen))]
    return {"train": seen[:n_train], "seen": seen[n_train:n_train + n_heldout], "unseen": unseen[:n_heldout]}


def default_prompt_split() -> dict[str, list[str]]:
    """The prompt sets the shipped reward model was trained and evaluated on (the config's defaults):
    fine-tuning uses its train prompts, the Lee experiment its held-out ones."""
    cfg = RewardTrainConfig()
    return prompt_split(cfg.train_prompts, cfg.heldout_prompts, cfg.seed)


def labelled_generations(generator, sets: dict[str, list[str]], per_prompt: int, seed: int) -> Labelled:
    """Generate and judge (cached on disk by generator weights, prompts and seed)."""
    key = cache_key("reward-data", generator.fingerprint(), sets, per_prompt, seed, JUDGE_VERSION)
    path = cache_dir("reward-data") / f"{key}.npz"
    if path.is_file():
        z = np.load(path, allow_pickle=False)
        return Labelled(z["images"], [str(p) for p in z["prompts"]], z["labels"], [str(s) for s in z["split"]])
    images, prompts, labels, split = [], [], [], []
    for name, plist in sets.items():
        out = generator.generate(plist, n=per_prompt, seed=seed)
        for p, imgs in tqdm(list(zip(plist, out)), desc=f"judging {name}", leave=False):
            for im in imgs:
                images.append(np.asarray(im.convert("RGB").resize((64, 64), Image.BILINEAR)))
                prompts.append(p)
                labels.append(float(judge(im, p).aligned))
                split.append(name)
    data = Labelled(np.stack(images), prompts, np.asarray(labels, np.float32), split)
    atomic_savez(path, images=data.images, prompts=np.array(prompts), labels=data.labels, split=np.array(split))
    return data


def train_head(img: np.ndarray, txt_index: np.ndarray, labels: np.ndarray, text_table: np.ndarray,
               negatives: np.ndarray, cfg: RewardConfig, steps: int, batch_size: int, lr: float, seed: int) -> RewardHead:
    """img: N×D image embeddings; txt_index: N indices into text_table; negatives: N×K indices (-1 = none)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    head = RewardHead(img.shape[1], cfg.hidden)
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=1e-4)
    img_t, table = torch.from_numpy(img), torch.from_numpy(text_table)
    y = torch.from_numpy(labels)
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr * 0.5 * (1 + np.cos(np.pi * step / steps))
        idx = rng.integers(len(img), size=batch_size)
        r = head(img_t[idx], table[txt_index[idx]])
        loss = torch.mean((r - y[idx]) ** 2)
        if cfg.lam > 0:
            good = idx[(labels[idx] > 0.5) & (negatives[idx, 0] >= 0)]
            if len(good):
                neg = negatives[good]  # G×K, padded with -1 where a prompt has fewer perturbations
                cand = np.concatenate([txt_index[good][:, None], neg], axis=1)
                valid = torch.from_numpy(cand >= 0)
                g_img = img_t[good][:, None, :].expand(-1, cand.shape[1], -1)
                scores = head(g_img, table[np.maximum(cand, 0)]) / cfg.temperature
                scores = scores.masked_fill(~valid, -1e4)
                loss = loss + cfg.lam * torch.nn.functional.cross_entropy(scores, torch.zeros(len(good), dtype=torch.long))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return head.eval()


def _auc(scores: np.ndarray, labels: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels, scores)) if 0 < labels.sum() < len(labels) else float("nan")


def classification_metrics(scores: np.ndarray, labels: np.ndarray, threshold: float, prompts=None) -> dict:
    """Accuracy at `threshold` and AUC pooled over all images; with `prompts`, also the mean AUC within a
    prompt (over prompts that have good and bad images), which a score that only tracks prompt difficulty
    cannot fake and a pooled AUC can hide."""
    m = {"accuracy": round(float(((scores >= threshold) == (labels > 0.5)).mean()), 4),
         "auc": round(_auc(scores, labels), 4), "n": int(len(labels)), "good_share": round(float(labels.mean()), 4)}
    if prompts is not None:
        prompts = np.asarray(prompts)
        per = [_auc(scores[prompts == p], labels[prompts == p]) for p in np.unique(prompts)]
        per = [a for a in per if not np.isnan(a)]
        m["within_prompt_auc"] = round(float(np.mean(per)), 4) if per else float("nan")
        m["prompts_with_both"] = len(per)
    return m


def best_threshold(scores: np.ndarray, labels: np.ndarray) -> float:
    cands = np.unique(scores)
    accs = [((scores >= c) == (labels > 0.5)).mean() for c in cands]
    return float(cands[int(np.argmax(accs))])


def train_reward(cfg: RewardTrainConfig, generator=None, encoders=None, progress=print) -> tuple[RewardModel, dict]:
    """Train the reward on rated data (`cfg.data`) or on judged generations of the embedded world; saves the
    model and metrics.json to `cfg.out`."""
    t0 = time.time()
    encoders = encoders or load_encoders(cfg.model.encoders or None)
    if cfg.data:
        img, prompts, labels, split, settings = rated_embeddings(cfg, encoders, progress)
    else:
        img, prompts, labels, split, settings = judged_embeddings(cfg, generator, encoders, progress)
    model, metrics = fit_reward(img, prompts, labels, split, encoders, cfg, settings)
    metrics["settings"]["seconds"] = round(time.time() - t0, 1)
    model.save(cfg.out, metrics)
    return model, metrics


def judged_embeddings(cfg: RewardTrainConfig, generator, encoders, progress):
    """Image embeddings, prompts, labels and splits (train / seen / unseen) of judged generations."""
    generator = generator or load_generator(cfg.generator or None)
    if not generator.is_shapes_world:
        raise RewardError(f"{generator.name} is not a ShapesWorld generator, so the judge cannot label its images: "
                          "learn from rated data instead (--data folder:DIR, richhf18k:DIR or rapidata:DIR)")
    sets = prompt_split(cfg.train_prompts, cfg.heldout_prompts, cfg.seed)
    data = labelled_generations(generator, sets, cfg.per_prompt, cfg.seed)
    progress(f"{len(data.labels)} judged images; good share {data.labels.mean():.2f}")
    img = encoders.embed_images([Image.fromarray(a) for a in data.images])
    return img, data.prompts, data.labels, np.array(data.split), {"generator": generator.name}


def heldout_by_prompt(prompt: str, share: float) -> bool:
    """Whether a prompt is held out: a stable hash of its text, so a rerun (or another process) agrees."""
    return zlib.crc32(prompt.strip().lower().encode()) % 10_000 < share * 10_000


def rated_embeddings(cfg: RewardTrainConfig, encoders, progress, batch: int = 64):
    """Image embeddings, prompts, labels (score ≥ threshold) and splits (train / heldout) of a rated dataset.

    Records without the score or an image, or whose image does not decode, are skipped with a reason
    (counted in the settings). Held out: the data's dev/test records when it has a train split and others;
    else a `heldout_share` of prompts."""
    if cfg.score not in SCORE_NAMES:
        raise RewardError(f"score must be one of {', '.join(SCORE_NAMES)}, got {cfg.score!r}")
    if not 0.0 < cfg.threshold <= 1.0:
        raise RewardError(f"threshold must lie in (0, 1] (scores are in [0, 1]), got {cfg.threshold}")
    if not 0.0 < cfg.heldout_share < 1.0:
        raise RewardError(f"heldout_share must lie in (0, 1), got {cfg.heldout_share}")
    ds = open_dataset(cfg.data, **({"pickapic": cfg.pickapic} if cfg.pickapic else {}))
    frame = ds.frame
    scores = frame[cfg.score].to_numpy(dtype=float)
    rows = np.flatnonzero(~np.isnan(scores))
    if cfg.max_records > 0:
        rows = rows[:cfg.max_records]
    if not len(rows):
        raise RewardError(f"{cfg.data}: no record has a {cfg.score} score to learn from")
    splits = set(frame["split"].astype(str).iloc[rows])
    by_data_split = "train" in splits and len(splits) > 1
    skipped: dict[str, int] = {}
    embs, prompts, labels, split, chunk = [], [], [], [], []

    def flush():
        if chunk:
            embs.append(encoders.embed_images([im for im, _ in chunk]))
            chunk.clear()

    for pos in tqdm(rows, desc="embedding rated images", leave=False):
        rec = ds[int(pos)]
        try:
            image = rec.image
        except RHFError as e:  # an unreadable image: skip the record, say why
            image, why = None, f"image unreadable ({type(e).__name__})"
        else:
            why = "no image" if image is None else ("no prompt" if not rec.prompt.strip() else "")
        if why:
            skipped[why] = skipped.get(why, 0) + 1
            continue
        chunk.append((image, rec.prompt))
        prompts.append(rec.prompt)
        labels.append(float(scores[pos] >= cfg.threshold))
        rec_split = str(frame["split"].iloc[pos])
        held = rec_split != "train" if by_data_split else heldout_by_prompt(rec.prompt, cfg.heldout_share)
        split.append("heldout" if held else "train")
        if len(chunk) >= batch:
            flush()
    flush()
    labels_a, split_a = np.asarray(labels, np.float32), np.array(split)
    train_labels = labels_a[split_a == "train"]
    if not len(train_labels) or not (split_a == "heldout").any():
        raise RewardError(f"{cfg.data}: {int((split_a == 'train').sum())} training and {int((split_a == 'heldout').sum())} "
                          "held-out images: both are needed (more records, or another --heldout-share)")
    if train_labels.min() == train_labels.max():
        side = "good" if train_labels[0] else "bad"
        raise RewardError(f"all {len(train_labels)} training images are {side} at {cfg.score} ≥ {cfg.threshold}: "
                          "no contrast to learn from; pick another --threshold")
    progress(f"{len(labels)} rated images ({int((split_a == 'heldout').sum())} held out); good share "
             f"{labels_a.mean():.2f} at {cfg.score} ≥ {cfg.threshold}" + (f"; skipped {skipped}" if skipped else ""))
    settings = {"data": ds.spec or cfg.data, "labels": f"{cfg.score} >= {cfg.threshold}",
                "heldout_by": "the data's dev/test split" if by_data_split else f"prompt hash, share {cfg.heldout_share}",
                "skipped": skipped}
    return np.concatenate(embs), prompts, labels_a, split_a, settings


def fit_reward(img: np.ndarray, prompts: list[str], labels: np.ndarray, split: np.ndarray, encoders,
               cfg: RewardTrainConfig, settings: dict) -> tuple[RewardModel, dict]:
    """Train the reward (and its λ = 0 ablation) on the `train` split; measure both and the CLIP-score
    baseline on every split (accuracy, AUC, within-prompt AUC, prompt classification)."""
    # Text table: every prompt and its perturbations.
    rng = np.random.default_rng(cfg.seed)
    per_prompt_neg = {p: perturbed_prompts(p, cfg.model.n_perturbed, rng) for p in sorted(set(prompts))}
    texts = sorted(set(prompts) | {q for v in per_prompt_neg.values() for q in v})
    pos = {t: i for i, t in enumerate(texts)}
    table = encoders.embed_texts(texts)
    txt_index = np.array([pos[p] for p in prompts])
    negatives = -np.ones((len(prompts), cfg.model.n_perturbed), dtype=np.int64)
    for i, p in enumerate(prompts):
        neg = [pos[q] for q in per_prompt_neg[p]]
        negatives[i, :len(neg)] = neg

    tr = split == "train"
    heads = {}
    for name, lam in (("reward", cfg.model.lam), ("reward_lambda0", 0.0)):
        mcfg = RewardConfig(**{**asdict(cfg.model), "lam": lam})
        heads[name] = train_head(img[tr], txt_index[tr], labels[tr], table, negatives[tr], mcfg, cfg.steps,
                                 cfg.batch_size, cfg.lr, cfg.seed)
    clip_score = np.sum(img * table[txt_index], axis=1)
    scores = {"clip_score": clip_score}
    for name, head in heads.items():
        with torch.no_grad():
            scores[name] = head(torch.from_numpy(img), torch.from_numpy(table[txt_index])).numpy()
    names = ["train"] + sorted(set(split) - {"train"})
    metrics: dict = {"settings": {**asdict(cfg), **settings, "encoders": encoders.name,
                                  "images": {s: int((split == s).sum()) for s in names}}}
    prompts_a = np.array(prompts)
    for name, sc in scores.items():
        thr = best_threshold(sc[tr], labels[tr]) if name == "clip_score" else 0.5
        metrics[name] = {"threshold": round(thr, 4), **{s: classification_metrics(sc[split == s], labels[split == s], thr,
                                                                              prompts_a[split == s])
                                                       for s in names}}
        # Prompt classification: does the true prompt outscore its perturbations (good held-out images)?
        for s in names[1:]:
            m = (split == s) & (labels > 0.5) & (negatives[:, 0] >= 0)
            if not m.any():
                continue
            cand = np.concatenate([txt_index[m][:, None], negatives[m]], axis=1)
            if name == "clip_score":
                sc_c = np.einsum("nd,nkd->nk", img[m], table[np.maximum(cand, 0)])
            else:
                with torch.no_grad():
                    sc_c = heads[name](torch.from_numpy(img[m])[:, None, :].expand(-1, cand.shape[1], -1),
                                       torch.from_numpy(table[np.maximum(cand, 0)])).numpy()
            sc_c = np.where(cand >= 0, sc_c, -np.inf)
            metrics[name][s]["prompt_classification_accuracy"] = round(float((sc_c.argmax(1) == 0).mean()), 4)
    return RewardModel(encoders, heads["reward"], cfg.model), metrics


def format_metrics(m: dict) -> str:
    lines = [f"{'model':16s} {'split':7s} {'acc':>6s} {'AUC':>6s} {'AUC/prompt':>10s} {'prompt-cls':>10s} {'n':>5s}"]
    held = [s for s in m["reward"] if s not in ("threshold", "train")]
    for name in ("reward", "reward_lambda0", "clip_score"):
        for s in held:
            b = m[name][s]
            lines.append(f"{name:16s} {s:7s} {b['accuracy']:6.3f} {b['auc']:6.3f} {b.get('within_prompt_auc', float('nan')):10.3f} "
                         f"{b.get('prompt_classification_accuracy', float('nan')):10.3f} {b['n']:5d}")
    return "\n".join(lines)

