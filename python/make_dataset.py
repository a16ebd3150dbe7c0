"""Generate tsloss_cuda/data/reviews.csv: the project's small 3-class review-sentiment task.

Origin: every sentence is produced by this script from hand-written templates and word lists
(no external data, no licence questions). Labels: ``positive``, ``negative``, ``neutral``.
What keeps it from being trivial for a frozen sentence encoder with a linear head:

* negation flips the polarity word ("was not great" is negative, "was not bad" is positive),
* neutral sentences reuse the same nouns and sentence frames as the opinionated ones,
* 4% of the training labels are flipped (label noise); validation labels are clean.

Run ``python python/make_dataset.py`` (seeded, deterministic) to rewrite the CSV.
Columns: ``text,label,split`` with ``split`` in {train, validation}.
"""
from __future__ import annotations

import csv
import os
import random

ITEMS = ["movie", "hotel", "pizza", "phone", "concert", "book", "laptop", "restaurant", "game",
         "service", "flight", "coffee", "jacket", "museum", "course", "headphones"]
POS = ["great", "wonderful", "excellent", "lovely", "fantastic", "superb", "delightful",
       "enjoyable", "impressive", "charming"]
NEG = ["terrible", "awful", "boring", "disappointing", "dreadful", "horrible", "mediocre",
       "annoying", "bland", "poor"]
OPINION = ["The {item} was {adj}.", "Honestly, the {item} felt {adj}.",
           "I thought the {item} was {adj}.", "Our {item} turned out {adj} in the end.",
           "My friends said the {item} was {adj}, and I agree."]
NEGATED = ["The {item} was not {adj}.", "Honestly, the {item} was never {adj}.",
           "I would not call the {item} {adj}.", "The {item} was not {adj} at all."]
NEUTRAL = ["The {item} was released on a {day}.", "I picked up the {item} on {day} morning.",
           "The {item} is about two hours away from here.", "We talked about the {item} on {day}.",
           "The {item} comes in three different versions.",
           "My friends said the {item} opens on {day}.", "I thought the {item} was in the city."]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]


def make(n_per_class: int = 200, seed: int = 0, noise: float = 0.04, val_frac: float = 0.25):
    """Rows ``(text, label, split)``: 3·n_per_class unique sentences, stratified split."""
    rng = random.Random(seed)
    rows = {"positive": set(), "negative": set(), "neutral": set()}
    while any(len(v) < n_per_class for v in rows.values()):
        item = rng.choice(ITEMS)
        kind = rng.random()
        if kind < 0.6:
            pol = rng.choice(["positive", "negative"])
            adj = rng.choice(POS if pol == "positive" else NEG)
            text, label = rng.choice(OPINION).format(item=item, adj=adj), pol
        else:
            # Negation: the adjective's polarity is flipped by the sentence.
            pol = rng.choice(["positive", "negative"])
            adj = rng.choice(NEG if pol == "positive" else POS)
            text, label = rng.choice(NEGATED).format(item=item, adj=adj), pol
        if rng.random() < 1 / 3:
            text, label = rng.choice(NEUTRAL).format(item=item, day=rng.choice(DAYS)), "neutral"
        if len(rows[label]) < n_per_class:
            rows[label].add(text)
    out = []
    for label, texts in rows.items():
        texts = sorted(texts)
        rng.shuffle(texts)
        n_val = int(len(texts) * val_frac)
        for i, t in enumerate(texts):
            split = "validation" if i < n_val else "train"
            lab = label
            if split == "train" and rng.random() < noise:
                lab = rng.choice([l for l in rows if l != label])
            out.append((t, lab, split))
    rng.shuffle(out)
    return out


def main() -> None:
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tsloss_cuda", "data",
                        "reviews.csv")
    rows = make()
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label", "split"])
        w.writerows(rows)
    print(f"wrote {len(rows)} rows to {os.path.normpath(path)}")


if __name__ == "__main__":
    main()
