"""Generate the project's two small synthetic classification tasks (``--task``).

Origin: every sentence is produced by this script from hand-written templates and word lists
(no external data, no licence questions). Both are seeded and deterministic; each training row's
label is flipped with probability 4% (label noise) and validation labels are clean.

``--task reviews`` (default) writes tsloss_cuda/data/reviews.csv, 3-class review sentiment.
Labels: ``positive``, ``negative``, ``neutral``.
What keeps it from being trivial for a frozen sentence encoder with a linear head:

* negation flips the polarity word ("was not great" is negative, "was not awful" is positive),
* neutral sentences reuse the same nouns and sentence frames as the opinionated ones,
* each training label is flipped with probability 4% (label noise); validation labels are clean.

``--task topics`` writes tsloss_cuda/data/topics.csv, 4-class topic classification of short
chat/news-style sentences. Labels: ``food``, ``science``, ``sports``, ``travel`` (each one
token with a leading space for the Gemma tokenizer). What keeps it from being trivial:

* all topics share the same sentence frames ("The podcast this week covered ..."),
* ambiguous head nouns occur in two topics ("the coach's halftime talk" is sports, "the coach
  from the airport" is travel; "the petri dish" science, "the fish dish" food),
* cross-topic distractor clauses ("over lunch", "on the train home", ...) are added to
  sentences of every topic alike,
* contrast sentences name two topics and the label is the one the sentence is *about*
  ("It was meant to cover the marathon, but it was really about the vaccine trial." is
  science); the two topics swap roles across frames, so word counts alone cannot tell them
  apart.

Run ``python python/make_dataset.py [--task reviews|topics] [--out PATH]`` to rewrite a CSV
byte for byte. Columns: ``text,label,split`` with ``split`` in {train, validation}.
"""
from __future__ import annotations

import argparse
import csv
import os
import random
import sys
from typing import Dict, Set

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


def split_rows(rows, rng: random.Random, val_frac: float, noise: float):
    """Rows ``(text, label, split)`` from label -> texts: a stratified validation split of
    ``val_frac`` per label, ``noise`` of the training labels flipped, all shuffled."""
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


def make(n_per_class: int = 200, seed: int = 0, noise: float = 0.04, val_frac: float = 0.25):
    """Rows ``(text, label, split)``: 3·n_per_class unique sentences, stratified split."""
    rng = random.Random(seed)
    rows: Dict[str, Set[str]] = {"positive": set(), "negative": set(), "neutral": set()}
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
    return split_rows(rows, rng, val_frac, noise)


TOPIC_PHRASES = {
    "sports": ["the football match", "the tennis final", "the city marathon", "the new goalkeeper",
               "the league table", "the swimming relay", "the cycling race",
               "the basketball playoffs", "the penalty shootout", "the referee's decision",
               "the cricket score", "the boxing match", "the new striker", "the golf tournament",
               "the ski jumping event", "the hockey game", "the transfer window",
               "the world cup qualifier", "the athletes' training camp", "the rowing regatta"],
    "science": ["the telescope images", "the vaccine trial", "the new dinosaur fossil",
                "the chemistry experiment", "the climate model", "the particle accelerator",
                "the genome study", "the lab results", "the Mars rover", "the black hole photo",
                "the research paper on bees", "the microscope slides", "the physics lecture",
                "the robot prototype", "the volcano measurements", "the quantum computer",
                "the stem cell samples", "the peer review", "the solar eclipse",
                "the DNA analysis"],
    "food": ["the pasta recipe", "the new bakery", "the lamb curry", "the chocolate cake",
             "the sushi place", "the tomato soup", "the cheese platter", "the sourdough bread",
             "the breakfast menu", "the barbecue ribs", "the vegan burger", "the spice blend",
             "the pork dumplings", "the wine pairing", "the olive oil tasting",
             "the lemon dessert", "the wood-fired pizza", "the grilled salmon",
             "the pancake stack", "the ramen broth"],
    "travel": ["the flight to Lisbon", "the hostel in Berlin", "the train across Italy",
               "the passport queue", "the beach resort", "the hiking trail in Peru",
               "the road trip", "the river cruise", "the hotel booking", "the airport lounge",
               "the visa rules", "the backpacking route", "the ferry to the islands",
               "the luggage allowance", "the city guidebook", "the mountain village tour",
               "the night bus to Prague", "the boarding pass", "the jet lag",
               "the campsite by the lake"],
}
#: Head nouns shared by two topics; the modifier decides the topic.
TOPIC_AMBIGUOUS = {
    "sports": ["the coach's halftime talk", "the new world record", "the golf course",
               "the season opener", "the team captain", "the home plate umpire"],
    "science": ["the petri dish", "the bacteria culture", "the team of chemists",
                "the record temperatures", "the tectonic plate", "the clinical trial"],
    "food": ["the fish dish", "the main course", "the strawberry season", "the dinner plate",
             "the cheese market", "the tasting team of chefs"],
    "travel": ["the coach from the airport", "the local culture", "the flower market",
               "the holiday season", "the guided tour", "the team of tour guides"],
}
TOPIC_FRAMES = ["We talked about {kw} on {day}.", "My sister keeps sending me news about {kw}.",
                "The podcast this week covered {kw}.", "Everyone at work was discussing {kw}.",
                "I read a long article about {kw} yesterday.",
                "Has anyone seen the latest update on {kw}?",
                "{name} wrote a blog post about {kw}.",
                "The newsletter led with {kw} this {day}.",
                "{name} could not stop talking about {kw}.",
                "There is a short video about {kw} going around."]
#: Label = ``main``. The frames put main first or second in equal measure.
TOPIC_CONTRAST = ["It was meant to cover {other}, but it was really about {main}.",
                  "It was really about {main}, though it was meant to cover {other}.",
                  "{name} mentioned {other} once, but the talk was mostly about {main}.",
                  "The talk was mostly about {main}; {name} mentioned {other} only once.",
                  "Forget {other}, the real story this {day} is {main}.",
                  "The real story this {day} is {main}, so forget {other}."]
#: Distractor clauses, added to sentences of every topic alike.
TOPIC_ASIDES = ["over lunch", "on the train home", "after my morning run", "between lab meetings",
                "while waiting for a flight", "during the match break", "at dinner",
                "on the way to the museum"]
NAMES = ["Anna", "Ben", "Carla", "David", "Elena", "Farid", "Grace", "Hugo"]


def make_topics(n_per_class: int = 200, seed: int = 0, noise: float = 0.04,
                val_frac: float = 0.25, contrast: float = 0.3, ambiguous: float = 0.25,
                aside: float = 0.3):
    """Rows ``(text, label, split)``: 4·n_per_class unique sentences, stratified split."""
    rng = random.Random(seed)
    labels = sorted(TOPIC_PHRASES)
    rows: Dict[str, Set[str]] = {label: set() for label in labels}
    seen: Dict[str, str] = {}

    def phrase(label):
        pool = TOPIC_AMBIGUOUS if rng.random() < ambiguous else TOPIC_PHRASES
        return rng.choice(pool[label])

    while any(len(v) < n_per_class for v in rows.values()):
        label = rng.choice(labels)
        slots = {"day": rng.choice(DAYS), "name": rng.choice(NAMES)}
        if rng.random() < contrast:
            other = rng.choice([l for l in labels if l != label])
            text = rng.choice(TOPIC_CONTRAST).format(main=phrase(label), other=phrase(other),
                                                     **slots)
        else:
            text = rng.choice(TOPIC_FRAMES).format(kw=phrase(label), **slots)
            if rng.random() < aside:
                text = f"{text[:-1]} {rng.choice(TOPIC_ASIDES)}{text[-1]}"
        text = text[0].upper() + text[1:]
        if seen.setdefault(text, label) != label:
            continue
        if len(rows[label]) < n_per_class:
            rows[label].add(text)
    return split_rows(rows, rng, val_frac, noise)


TASKS = {"reviews": make, "topics": make_topics}
DATA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tsloss_cuda", "data")


def write(task: str, path: str) -> int:
    """Write ``task``'s CSV to ``path``; returns the number of rows."""
    rows = TASKS[task]()
    # Written beside it and moved over it: a crash mid-write leaves the shipped file whole.
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["text", "label", "split"])
            w.writerows(rows)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return len(rows)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", choices=sorted(TASKS), default="reviews")
    ap.add_argument("--out", help="output CSV (default tsloss_cuda/data/<task>.csv)")
    args = ap.parse_args(argv)
    if args.out is not None and not args.out.strip():
        # Empty would fall back to the package's own file and overwrite it.
        sys.exit("make_dataset: --out is empty; name the CSV file to write (or leave --out out "
                 "for the package's default)")
    path = args.out or os.path.join(DATA_DIR, f"{args.task}.csv")
    if os.path.isdir(path):
        sys.exit(f"make_dataset: --out {path} is a folder; name the CSV file to write")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        sys.exit(f"make_dataset: --out {path}: folder not found: {folder}")
    try:
        n = write(args.task, path)
    except OSError as exc:
        sys.exit(f"make_dataset: --out {path}: cannot write: {exc.strerror or exc}")
    print(f"wrote {n} rows to {os.path.normpath(path)}")


if __name__ == "__main__":
    main()
