"""The example pipeline: raw CSV bundle -> ingest -> clean -> features -> train -> evaluate.

Every step reads bundles and writes one; parameters pass down as in luigi, so changing
``C`` re-runs only Train and Evaluate, while changing ``max_abs_z`` re-runs from Clean.

    datamon run start mlpipe.tasks:Evaluate --workers 2
    datamon run start mlpipe.tasks:Evaluate --param C=0.1 --dry-run
"""

from __future__ import annotations

import csv
import json
import math
import pickle
from pathlib import Path
from typing import Any

from datamon.pipeline import (
    BundleOutput,
    ExternalBundle,
    FloatParameter,
    IntParameter,
    RunContext,
    StrParameter,
    Task,
)

FEATURES = ("age", "income", "visits", "score")
LABEL = "label"


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def write_rows(path: Path, columns: list[str], rows: list[dict[str, Any]]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def write_json(path: Path, data: object) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


class Ingest(Task):
    """Concatenate the raw CSV parts, keeping only rows with every column a number."""

    raw_repo = StrParameter(default="mlpipe-raw")
    raw_label = StrParameter(default="latest")

    def requires(self) -> ExternalBundle:
        return ExternalBundle(self.raw_repo, label=self.raw_label)

    def output(self) -> BundleOutput:
        return BundleOutput("mlpipe-ingested", label="latest")

    def run(self, ctx: RunContext) -> None:
        kept: list[dict[str, str]] = []
        dropped = 0
        for part in sorted(ctx.input.glob("*.csv")):
            for row in read_rows(part):
                values = [row.get(c) for c in (*FEATURES, LABEL)]
                try:
                    [float(v) for v in values if v is not None]
                except ValueError:
                    dropped += 1
                    continue
                if any(v in (None, "") for v in values):
                    dropped += 1
                    continue
                kept.append(row)
        ctx.log.info("kept %d rows, dropped %d malformed", len(kept), dropped)
        ctx.output.mkdir()
        write_rows(ctx.output / "rows.csv", ["id", *FEATURES, LABEL], kept)
        write_json(ctx.output / "ingest.json", {"rows": len(kept), "dropped": dropped})
        ctx.log_metric("ingested_rows", len(kept))


class Clean(Task):
    """Drop rows whose income lies more than ``max_abs_z`` standard deviations out."""

    raw_label = StrParameter(default="latest")
    max_abs_z = FloatParameter(default=4.0)

    def requires(self) -> Task:
        return Ingest(raw_label=self.raw_label)

    def output(self) -> BundleOutput:
        return BundleOutput("mlpipe-clean", label="latest")

    def run(self, ctx: RunContext) -> None:
        rows = read_rows(ctx.input / "rows.csv")
        incomes = [math.log(float(r["income"])) for r in rows]
        mean = sum(incomes) / len(incomes)
        std = math.sqrt(sum((x - mean) ** 2 for x in incomes) / len(incomes))
        kept = [
            r for r, x in zip(rows, incomes, strict=True) if abs(x - mean) <= self.max_abs_z * std
        ]
        print(f"clean: {len(rows) - len(kept)} outliers removed (|z| > {self.max_abs_z})")
        ctx.output.mkdir()
        write_rows(ctx.output / "rows.csv", ["id", *FEATURES, LABEL], kept)


class Features(Task):
    """Standardise, add squares and pairwise products up to ``degree``, split train/test."""

    raw_label = StrParameter(default="latest")
    max_abs_z = FloatParameter(default=4.0)
    degree = IntParameter(default=2)
    test_fraction = FloatParameter(default=0.25)
    seed = IntParameter(default=0)

    def requires(self) -> Task:
        return Clean(raw_label=self.raw_label, max_abs_z=self.max_abs_z)

    def output(self) -> BundleOutput:
        return BundleOutput("mlpipe-features", label="latest")

    def run(self, ctx: RunContext) -> None:
        import numpy as np
        from sklearn.model_selection import train_test_split
        from sklearn.preprocessing import PolynomialFeatures, StandardScaler

        rows = read_rows(ctx.input / "rows.csv")
        x = np.array([[float(r[c]) for c in FEATURES] for r in rows])
        x[:, 1] = np.log(x[:, 1])
        y = np.array([int(r[LABEL]) for r in rows])
        x = StandardScaler().fit_transform(x)
        poly = PolynomialFeatures(self.degree, include_bias=False)
        x = poly.fit_transform(x)
        names = list(poly.get_feature_names_out(list(FEATURES)))
        x_train, x_test, y_train, y_test = train_test_split(
            x, y, test_size=self.test_fraction, random_state=self.seed, stratify=y
        )
        ctx.output.mkdir()
        for split, xs, ys in (("train", x_train, y_train), ("test", x_test, y_test)):
            table = np.column_stack([xs, ys])
            header = ",".join([*names, LABEL])
            np.savetxt(
                ctx.output / f"{split}.csv",
                table,
                fmt="%.6f",
                delimiter=",",
                header=header,
                comments="",
            )
        ctx.log.info(
            "%d features, %d train rows, %d test rows", len(names), len(y_train), len(y_test)
        )


def load_split(path: Path) -> tuple[Any, Any]:
    import numpy as np

    table = np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2)
    return table[:, :-1], table[:, -1].astype(int)


class Train(Task):
    """Fit a logistic regression with inverse regularisation strength ``C``."""

    raw_label = StrParameter(default="latest")
    max_abs_z = FloatParameter(default=4.0)
    degree = IntParameter(default=2)
    test_fraction = FloatParameter(default=0.25)
    seed = IntParameter(default=0)
    C = FloatParameter(default=1.0)
    max_iter = IntParameter(default=500)

    def requires(self) -> Task:
        return Features(
            raw_label=self.raw_label,
            max_abs_z=self.max_abs_z,
            degree=self.degree,
            test_fraction=self.test_fraction,
            seed=self.seed,
        )

    def output(self) -> BundleOutput:
        return BundleOutput("mlpipe-model", label="latest")

    def run(self, ctx: RunContext) -> None:
        from sklearn.linear_model import LogisticRegression

        x, y = load_split(ctx.input / "train.csv")
        model = LogisticRegression(C=self.C, max_iter=self.max_iter).fit(x, y)
        accuracy = float(model.score(x, y))
        ctx.log.info("train accuracy %.4f with C=%g", accuracy, self.C)
        ctx.log_metric("train_accuracy", round(accuracy, 6))
        ctx.output.mkdir()
        (ctx.output / "model.pkl").write_bytes(pickle.dumps(model, protocol=5))
        write_json(
            ctx.output / "coefficients.json",
            {
                "intercept": round(float(model.intercept_[0]), 6),
                "coef": [round(float(c), 6) for c in model.coef_[0]],
            },
        )


class Evaluate(Task):
    """Score the model on the held-out split; the metrics go into the bundle and the run."""

    raw_label = StrParameter(default="latest")
    max_abs_z = FloatParameter(default=4.0)
    degree = IntParameter(default=2)
    test_fraction = FloatParameter(default=0.25)
    seed = IntParameter(default=0)
    C = FloatParameter(default=1.0)
    max_iter = IntParameter(default=500)

    def requires(self) -> dict[str, Task]:
        shared = {
            "raw_label": self.raw_label,
            "max_abs_z": self.max_abs_z,
            "degree": self.degree,
            "test_fraction": self.test_fraction,
            "seed": self.seed,
        }
        return {
            "model": Train(**shared, C=self.C, max_iter=self.max_iter),
            "features": Features(**shared),
        }

    def output(self) -> BundleOutput:
        return BundleOutput("mlpipe-metrics", label="latest")

    def run(self, ctx: RunContext) -> None:
        from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

        model = pickle.loads((ctx.inputs["model"] / "model.pkl").read_bytes())
        x, y = load_split(ctx.inputs["features"] / "test.csv")
        predicted = model.predict(x)
        metrics = {
            "accuracy": round(float(accuracy_score(y, predicted)), 6),
            "f1": round(float(f1_score(y, predicted)), 6),
            "roc_auc": round(float(roc_auc_score(y, model.predict_proba(x)[:, 1])), 6),
            "test_rows": len(y),
        }
        for name, value in metrics.items():
            ctx.log_metric(name, value)
        print("metrics:", json.dumps(metrics, sort_keys=True))
        ctx.output.mkdir()
        write_json(ctx.output / "metrics.json", metrics)
