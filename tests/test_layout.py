"""The run folder's layout is named in one place (oqat.layout): what writers put there,
readers find there."""
import os

from oqat.files import records
from oqat.files.layout import RunLayout, SearchLayout, TrainingLayout
from oqat.search.front import SearchResult, write_outputs


def test_a_run_names_every_path_from_its_root():
    run = RunLayout("runs/x")
    assert run.config == "runs/x/config.yaml" and run.report == "runs/x/report.md"
    assert run.results == "runs/x/results.json" and run.analysis.json == "runs/x/analysis/analysis.json"
    assert run.analysis.plot("loss_vs_traits") == "runs/x/analysis/analysis_loss_vs_traits.png"
    assert run.stage(0, 32) == TrainingLayout("runs/x/stages/0-fp")
    stage = run.stage(2, 3)
    assert stage.supernet == "runs/x/stages/2-3bit/supernet.pt"
    assert stage.last == "runs/x/stages/2-3bit/checkpoints/last.pt"
    assert (stage.metrics, stage.tb) == ("runs/x/stages/2-3bit/metrics.jsonl", "runs/x/stages/2-3bit/tb")
    assert stage.inherited == "runs/x/stages/2-3bit/inherited.pt"
    assert run.search(2) == SearchLayout("runs/x/search/2bit")
    assert run.search(2).evaluated == "runs/x/search/2bit/evaluated.json"
    assert run.export(4, "M").facts == "runs/x/export/4bit-M/facts.json"
    assert (run.export(4, "M").onnx, run.export(4, "M").packed) == ("runs/x/export/4bit-M/model.onnx",
                                                                    "runs/x/export/4bit-M/weights.oqpk")
    # A mixed precision by its widths or by the run's key for it; the recommended family as "best".
    assert run.stage(3, [2, 3, 4]).root == "runs/x/stages/3-mixed234"
    assert run.search((2, 3, 4)) == run.search("mixed234") == SearchLayout("runs/x/search/mixed234")
    assert run.export("mixed234", "S").root == "runs/x/export/mixed234-S"
    assert run.export("best", "L").root == "runs/x/export/best-L"
    assert run.relative(run.export(4, "M").root) == "export/4bit-M"


def test_the_stages_there_are_come_by_index_whatever_their_bits(tmp_path):
    run = RunLayout(str(tmp_path))
    assert run.stages() == []
    for name in ("10-2bit", "2-4bit", "0-fp", "notes", "1-32bit"):
        (tmp_path / "stages" / name).mkdir(parents=True)
    assert [os.path.basename(s.root) for s in run.stages()] == ["0-fp", "1-32bit", "2-4bit", "10-2bit"]
    assert run.stages()[0] == run.stage(0, 32)


def test_a_search_writes_where_the_run_reads(tmp_path):
    out = RunLayout(str(tmp_path)).search(4)
    os.makedirs(out.root)
    front = [{"arch": "a", "bitops": 1.0, "val_top1": 50.0}]
    write_outputs(SearchResult("bitops", 4, [], front, front), out.root)
    assert all(os.path.isfile(p) for p in (out.pareto, out.evaluated, out.plot))
    assert records.read_pareto(out.pareto)["front"] == records.read_evaluated(out.evaluated) == front
