"""Results: flat metrics for logging, JSON round trip, Markdown tables and `model-index` entries."""

import pytest

from modeling_concept_clip.evaluation import (
    BenchmarkResult,
    EvaluationRun,
    MetricValue,
    SugarCrepeConfig,
    benchmark_from_dict,
    comparison_table,
    load_runs,
    save_runs,
)


def make_run(label, add, swap):
    sugarcrepe = BenchmarkResult(
        name="sugarcrepe", kind="sugarcrepe",
        task={"type": "image-text-matching", "name": "Compositional image-text matching"},
        dataset={"name": "SugarCrepe", "type": "RAIVNLab/sugar-crepe", "split": "test"},
        metrics=[MetricValue("add", add, "accuracy", "Accuracy (Add)"), MetricValue("swap", swap, "accuracy", "Accuracy (Swap)")],
        num_examples={"total": 7512},
    )  # fmt: skip
    return EvaluationRun(
        model={"name_or_path": f"models/{label}", "label": label}, settings={}, benchmarks=[sugarcrepe]
    )


def test_flat_metrics_for_logging():
    run = make_run("c2lip", 0.942, 0.731)
    assert run.flat_metrics(prefix="eval/") == {"eval/sugarcrepe/add": 0.942, "eval/sugarcrepe/swap": 0.731}


def test_json_round_trip(tmp_path):
    runs = [make_run("control", 0.879, 0.697), make_run("c2lip", 0.942, 0.731)]
    path = save_runs(runs, tmp_path / "out" / "results.json")
    assert load_runs(path) == runs


def test_comparison_table_with_difference_column():
    table = comparison_table([make_run("control", 0.879, 0.697), make_run("c2lip", 0.942, 0.731)])
    assert table.splitlines() == [
        "| benchmark | metric | control | c2lip | Δ |",
        "|---|---|---:|---:|---:|",
        "| sugarcrepe | add | 87.9 | 94.2 | +6.3 |",
        "| sugarcrepe | swap | 69.7 | 73.1 | +3.4 |",
    ]


def test_model_index_uses_percent_and_card_fields():
    (entry,) = make_run("c2lip", 0.942, 0.731).model_index("org/c2lip-siglip-b16")
    assert entry["name"] == "org/c2lip-siglip-b16"
    (result,) = entry["results"]
    assert result["task"] == {"type": "image-text-matching", "name": "Compositional image-text matching"}
    assert result["dataset"] == {"name": "SugarCrepe", "type": "RAIVNLab/sugar-crepe", "split": "test"}
    assert result["metrics"][0] == {"type": "accuracy", "value": 94.2, "name": "Accuracy (Add)"}


def test_benchmark_configs_round_trip_through_dicts():
    config = SugarCrepeConfig(name="probes", data_dir="world/probes", subsets=None)
    assert benchmark_from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="Unknown benchmark kind 'imagenet'"):
        benchmark_from_dict({"kind": "imagenet"})


def test_read_benchmark_file_yaml_and_errors(tmp_path):
    from modeling_concept_clip.evaluation import EvaluationDataError, read_benchmark_file

    path = tmp_path / "benchmarks.yaml"
    path.write_text("- {kind: sugarcrepe, name: probes, data_dir: world/test, subsets: null}\n"
                    "- {kind: retrieval, annotation_file: world/test/retrieval.json, recall_at: [1, 5]}\n")  # fmt: skip
    probes, retrieval = read_benchmark_file(path)
    assert probes == SugarCrepeConfig(name="probes", data_dir="world/test", subsets=None)
    assert retrieval.recall_at == [1, 5] and retrieval.name == "retrieval"
    path.write_text("- {kind: retrieval}\n")
    with pytest.raises(EvaluationDataError, match=r"benchmarks\.yaml, entry 0: .*needs `annotation_file`"):
        read_benchmark_file(path)
