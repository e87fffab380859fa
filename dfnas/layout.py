"""The results layout: where every output of a run lives, in one place for the rules and the report.

Every path is under ``results/<run>/``. Arguments may be values or Snakemake wildcards
(``"{variant}"``, ``"{seed}"``), so the rules build their patterns from the same methods the report
uses to find the files:

    layout = Layout("smoke")
    layout.architecture("darts", "full", 0)          results/smoke/search/darts/full/seed0/architecture.json
    layout.architecture("{algorithm}", "{source}", "{seed}")   the rule's output pattern
"""

from __future__ import annotations

import os
from dataclasses import dataclass

RANDOM = "random"  # the search source of the random baseline
NATURAL = "natural"


@dataclass(frozen=True)
class Layout:
    run: str
    root: str = "results"

    @classmethod
    def of(cls, run_dir) -> "Layout":
        """The layout of the run whose outputs are in ``run_dir`` (``results/<run>``)."""
        run_dir = os.path.normpath(str(run_dir))
        return cls(os.path.basename(run_dir), os.path.dirname(run_dir))

    def path(self, *parts) -> str:
        return os.path.join(self.root, self.run, *map(str, parts))

    # Natural data and the teacher
    def data_json(self) -> str:
        return self.path("data", "dataset.json")

    def teacher(self) -> str:
        return self.path("teacher", "teacher.pt")

    def teacher_meta(self) -> str:
        return self.path("teacher", "teacher.json")

    def teacher_eval(self) -> str:
        return self.path("teacher", "eval.json")

    # Synthesis
    def synthesis(self, *parts) -> str:
        return self.path("synthesis", *parts)

    def shard(self, variant, shard) -> str:
        shard = shard if isinstance(shard, str) else f"{shard:03d}"
        return self.synthesis(variant, f"shard_{shard}.h5")

    def dataset(self, variant) -> str:
        return self.synthesis(variant, "dataset.h5")

    def samples(self, variant) -> str:
        return self.synthesis(variant, "samples.png")

    def soft_labels(self, variant) -> str:
        return self.synthesis(variant, "soft_labels.h5")

    def quality(self, variant) -> str:
        return self.synthesis(variant, "quality.json")

    def natural_reference(self) -> str:
        return self.synthesis("natural_reference.json")

    # Searches (one folder per algorithm x source x seed)
    def search_dir(self, algorithm, source, seed) -> str:
        return self.path("search", algorithm, source, f"seed{seed}")

    def architecture(self, algorithm, source, seed) -> str:
        return os.path.join(self.search_dir(algorithm, source, seed), "architecture.json")

    def history(self, algorithm, source, seed) -> str:
        return os.path.join(self.search_dir(algorithm, source, seed), "history.csv")

    def architecture_figure(self, algorithm, source, seed) -> str:
        return os.path.join(self.search_dir(algorithm, source, seed), "architecture.png")

    def search_network(self, algorithm, source, seed) -> str:
        return os.path.join(self.search_dir(algorithm, source, seed), "search_network.pt")

    def supernet_test(self, algorithm, source, seed) -> str:
        return os.path.join(self.search_dir(algorithm, source, seed), "supernet_test.json")

    def ranking(self, source, seed, ext: str = "json") -> str:
        return os.path.join(self.search_dir("spos", source, seed), f"ranking.{ext}")

    # Fidelity: per search space, the drawn architectures, each source's proxy scores, the truth
    def fidelity(self, space, *parts) -> str:
        return self.path("fidelity", space, *parts)

    def fidelity_architectures(self, space) -> str:
        return self.fidelity(space, "architectures.json")

    def fidelity_architecture(self, space, index) -> str:
        return self.fidelity(space, f"arch{index}.json")

    def fidelity_proxy(self, space, source) -> str:
        return self.fidelity(space, f"proxy_{source}.json")

    def fidelity_truth(self, space, index, repeat) -> str:
        return self.fidelity(space, "retrain", f"arch{index}_repeat{repeat}.json")

    # Retrain and report
    def metrics(self, algorithm, source, seed) -> str:
        return self.path("retrain", algorithm, source, f"seed{seed}", "metrics.json")

    # The data-free student
    def student(self, algorithm, variant, seed, name: str = "metrics.json") -> str:
        return self.path("student", algorithm, variant, f"seed{seed}", name)

    def report(self, *parts) -> str:
        return self.path("report", *parts)

    # Logs and per-rule benchmarks
    def log(self, name: str) -> str:
        return self.path("logs", f"{name}.log")

    def benchmark(self, name: str) -> str:
        return self.path("benchmarks", f"{name}.tsv")


def synthetic_sources(cfg: dict) -> list[str]:
    """The configured search sources that are synthesis variants."""
    return [s for s in cfg["search"]["sources"] if s not in (NATURAL, RANDOM)]


def ordered_sources(sources) -> list[str]:
    """natural first, the synthetic variants in config order, random last."""
    sources = list(sources)
    return ([s for s in sources if s == NATURAL] + [s for s in sources if s not in (NATURAL, RANDOM)]
            + [s for s in sources if s == RANDOM])


def arms(cfg: dict) -> list[tuple[str, str, int]]:
    """Every (algorithm, source, seed) of the run, sources in report order."""
    s = cfg["search"]
    return [(a, src, seed) for a in s["algorithms"] for src in ordered_sources(s["sources"]) for seed in s["seeds"]]


def ranked(cfg: dict) -> list[tuple[str, int]]:
    """The (synthetic source, seed) pairs whose SPOS supernet gets the ranking check."""
    s = cfg["search"]
    if "spos" not in s["algorithms"] or not s["spos"]["ranking"]["paths"]:
        return []
    return [(src, seed) for src in synthetic_sources(cfg) for seed in s["seeds"]]


def supernet_tested(cfg: dict) -> list[tuple[str, str, int]]:
    """The searches (not the random baselines) whose trained search network is scored on natural
    test images (``search.supernet_test.images``; none when 0)."""
    if not cfg["search"]["supernet_test"]["images"]:
        return []
    return [arm for arm in arms(cfg) if arm[1] != RANDOM]


def students(cfg: dict) -> list[tuple[str, str, int]]:
    """The (algorithm, variant, seed) of every data-free student: each search on ``student.variant``."""
    variant = cfg["student"]["variant"]
    if variant is None:
        return []
    return [(a, variant, seed) for a in cfg["search"]["algorithms"] for seed in cfg["search"]["seeds"]]


def fidelity_sources(cfg: dict) -> list[str]:
    """The sources the fidelity stage ranks with (natural first, then the variants); none without it."""
    if not cfg["fidelity"]["architectures"]:
        return []
    sources = cfg["fidelity"]["sources"] or [NATURAL, *cfg["synthesis"]["variants"]]
    return ordered_sources(sources)


def fidelity_spaces(cfg: dict) -> list[str]:
    """The search spaces of the fidelity stage, named by their algorithm (each searches a space of its
    own name): ``fidelity.algorithms``, else those of the run's searches."""
    if not cfg["fidelity"]["architectures"]:
        return []
    return list(cfg["fidelity"]["algorithms"] or cfg["search"]["algorithms"])
