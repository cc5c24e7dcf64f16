"""lmms-eval's ``--model mmtransfer``: a local task (a YAML over a JSON file of the synthetic shapes questions, no
hub) scored by lmms-eval gives the answers and the score ``mmtransfer eval`` gives on the same samples, and its
log-likelihoods are the model's."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch

pytest.importorskip("lmms_eval", reason="the lmms-eval extra: pip install 'mmtransfer[lmms-eval]'")
from lmms_eval.api.instance import Instance  # noqa: E402

import mmtransfer  # noqa: E402
from mmtransfer.cli import main  # noqa: E402
from mmtransfer.lmms_eval import MMTransferLMM  # noqa: E402
from mmtransfer.synthetic import write_all  # noqa: E402
from tests.tiny_models import tiny_model_config  # noqa: E402

N = 12
TASK_YAML = """task: mmt_shapes_vqa
dataset_path: json
dataset_kwargs:
  data_files: {{test: {data}}}
test_split: test
output_type: generate_until
doc_to_visual: !function utils.doc_to_visual
doc_to_text: !function utils.doc_to_text
doc_to_target: answer
generation_kwargs: {{max_new_tokens: 6, do_sample: false, until: []}}
process_results: !function utils.process_results
metric_list:
  - metric: vqa_accuracy
    aggregation: mean
    higher_is_better: true
"""
TASK_UTILS = '''from PIL import Image

from mmtransfer.metrics import vqa_accuracy


def doc_to_visual(doc):
    return [Image.open(doc["image_path"]).convert("RGB")]


def doc_to_text(doc):
    return "<image>Question: " + doc["question"] + "\\nAnswer:"


def process_results(doc, results):
    return {"vqa_accuracy": vqa_accuracy([results[0]], [[doc["answer"]]])}
'''


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A tiny trained-for-nothing VQA model saved to disk, the first N shapes questions as our manifest and as the
    task's JSON (absolute image paths), and the task folder."""
    tmp = tmp_path_factory.mktemp("lmms")
    torch.manual_seed(0)
    cfg = tiny_model_config("llama")
    cfg.pop("audio_encoder"), cfg.pop("audio_projector")
    mmtransfer.build_model(cfg).save_pretrained(tmp / "model")
    shapes = write_all(tmp / "syn", n_train=4, n_test=4) / "shapes"
    rows = [json.loads(line) for line in (shapes / "vqa_test.jsonl").read_text().splitlines()][:N]
    (tmp / "ours.jsonl").write_text("".join(json.dumps({**r, "image": str(shapes / r["image"])}) + "\n" for r in rows))
    (tmp / "task.jsonl").write_text("".join(json.dumps({**r, "image_path": str(shapes / r["image"])}) + "\n"
                                            for r in rows))
    tasks = tmp / "tasks"
    tasks.mkdir()
    (tasks / "mmt_shapes_vqa.yaml").write_text(TASK_YAML.format(data=tmp / "task.jsonl"))
    (tasks / "utils.py").write_text(TASK_UTILS)
    return {"tmp": tmp, "tasks": tasks, "rows": rows}


def test_lmms_eval_scores_as_mmtransfer_eval(setup: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.tasks import TaskManager

    tmp = setup["tmp"]
    out = simple_evaluate(model="mmtransfer", model_args=f"pretrained={tmp / 'model'},batch_size=5",
                          tasks=["mmt_shapes_vqa"], task_manager=TaskManager(include_path=str(setup["tasks"])),
                          log_samples=True)
    theirs = out["results"]["mmt_shapes_vqa"]["vqa_accuracy,none"]
    answers = [s["filtered_resps"][0] for s in sorted(out["samples"]["mmt_shapes_vqa"], key=lambda s: s["doc_id"])]
    model = mmtransfer.load(tmp / "model")
    rows = setup["rows"]
    expected = model.answer([str(tmp / "syn" / "shapes" / r["image"]) for r in rows], [r["question"] for r in rows],
                            max_new_tokens=6)
    assert answers == expected and any(answers)  # the same prompts reach the same model
    capsys.readouterr()
    assert main(["eval", str(tmp / "model"), "--task", "vqa", "--data", str(tmp / "ours.jsonl"),
                 "--max-new-tokens", "6", "--no-media-gain"]) == 0
    ours = json.loads(capsys.readouterr().out)
    assert theirs == pytest.approx(ours["vqa_accuracy"], abs=1e-12)


class _Ids:
    """A streamer that keeps the generated ids (``chat`` strips its text; the raw text re-tokenizes the same)."""

    def __init__(self) -> None:
        self.ids: list[int] = []

    def put(self, value: torch.Tensor) -> None:
        if value.dim() == 1:
            self.ids += value.tolist()

    def end(self) -> None:
        pass


def _raw_greedy(model: mmtransfer.MultimodalGPT, image: str, text: str) -> str | None:
    """The greedy continuation's text, when it tokenizes back to the generated ids (an untrained model may
    generate a non-canonical split, e.g. "fi" + "lm" where the tokenizer writes "film"): else None."""
    ids = _Ids()
    model.chat([{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": text}]}],
               max_new_tokens=3, streamer=ids)
    kept = [i for i in ids.ids if i != model.tokenizer.eos_token_id]
    decoded = model.tokenizer.decode(kept)
    return decoded if model.tokenizer(decoded, add_special_tokens=False)["input_ids"] == kept else None


def test_loglikelihood_is_the_models_and_knows_its_greedy_answer(setup: dict[str, Any]) -> None:
    tmp = setup["tmp"]
    lm = MMTransferLMM(pretrained=str(tmp / "model"), batch_size=2)
    docs = {i: {"image_path": str(tmp / "syn" / "shapes" / r["image"]), **r} for i, r in enumerate(setup["rows"])}
    lm.task_dict = {"t": {"test": docs}}
    from PIL import Image

    def visual(doc: dict) -> list:
        return [Image.open(doc["image_path"]).convert("RGB")]

    contexts = {i: f"<image>Question: {d['question']}\nAnswer:" for i, d in docs.items()}
    greedy = {i: _raw_greedy(lm.model, d["image_path"], contexts[i][len("<image>"):]) for i, d in docs.items()}
    picked = [i for i, g in greedy.items() if g][:3]
    assert len(picked) == 3, greedy
    requests = [Instance("loglikelihood", (contexts[i], target, visual, i, "t", "test"), idx=0,
                         metadata={"task": "t", "doc_id": i, "repeats": 1})
                for i in picked for target in (greedy[i], "zebra")]
    scores = lm.loglikelihood(requests)
    assert [g for _, g in scores[0::2]] == [True] * 3  # its own greedy answer is greedy
    assert [g for _, g in scores[1::2]] == [False] * 3
    first = picked[0]
    conv = [{"role": "user", "content": [{"type": "image", "image": docs[first]["image_path"]},
                                         {"type": "text", "text": contexts[first][len("<image>"):]}]},
            {"role": "assistant", "content": "zebra"}]
    expected = lm.model.sequence_logprobs(lm.model.processor([conv], labels=True, add_eos=False))
    assert scores[1][0] == pytest.approx(float(expected[0]), abs=1e-4)
    assert all(lp < 0 for lp, _ in scores)


def test_requests_place_images_and_audio_at_their_markers() -> None:
    """lmms-eval visuals become parts at the text's markers in order, else before the text; audio comes as HF
    datasets decode it."""
    import numpy as np
    from PIL import Image

    from mmtransfer.lmms_eval import user_turn

    image, clip = Image.new("RGB", (4, 4)), {"array": np.zeros(160, dtype=np.float32), "sampling_rate": 8000}
    turn = user_turn("Listen <audio> then look <image> and say", [clip, image])
    assert [p["type"] for p in turn["content"]] == ["text", "audio", "text", "image", "text"]
    assert turn["content"][1]["sample_rate"] == 8000 and turn["content"][1]["audio"] is clip["array"]
    assert [p.get("text") for p in turn["content"] if p["type"] == "text"] == ["Listen ", " then look ", " and say"]
    plain = user_turn("What is it?", [image, clip])
    assert [p["type"] for p in plain["content"]] == ["image", "audio", "text"]
