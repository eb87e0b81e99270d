"""Every engine that runs on this host answers the same questions the same way, via real runners."""

from __future__ import annotations


import pytest

from models_app.serving.engines.contract import LoadSpec

from .conftest import FRANCE, GREEDY, JAPAN, collect, llama_spec

ENGINE_CASES = ["llama.cpp", "transformers-gguf", "transformers-safetensors", "transformers-4bit",
                "transformers-8bit", "openai-remote"]


@pytest.fixture
def spec_for(request, gguf_path):
    def build(case: str) -> LoadSpec:
        if case == "llama.cpp":
            return llama_spec(gguf_path, name=case)
        if case == "transformers-gguf":
            return LoadSpec(name=case, engine="transformers", model_id=str(gguf_path.parent), quantization="Q4_1",
                            parameters={"gguf_file": gguf_path.name})
        if case.startswith("transformers-"):
            folder = request.getfixturevalue("safetensors_dir")
            quant = {"transformers-4bit": "4bit", "transformers-8bit": "8bit"}.get(case, "none")
            return LoadSpec(name=case, engine="transformers", model_id=str(folder), quantization=quant)
        base_url = request.getfixturevalue("llama_server")
        return LoadSpec(name=case, engine="openai", model_id="smollm2", parameters={"base_url": base_url})
    return build


@pytest.mark.slow
@pytest.mark.parametrize("case", ENGINE_CASES)
def test_every_engine_answers_paris_greedily_through_a_runner(shared_manager, spec_for, case):
    spec = spec_for(case)
    info = shared_manager.load(spec)
    assert info.status == "loaded" and info.pid

    text, deltas, final = collect(shared_manager.generate(spec.name, FRANCE, GREEDY))

    assert final.kind == "done", final.message
    assert "Paris" in text
    assert deltas > 1
    assert final.stats.prompt_tokens > 0
    assert final.stats.tokens_generated > 0
    assert final.stats.finish_reason in ("stop", "length")


def test_llama_cpp_answers_tokyo_for_japan(shared_manager, spec_for):
    spec = spec_for("llama.cpp")
    shared_manager.load(spec)
    text, _, final = collect(shared_manager.generate(spec.name, JAPAN, GREEDY))
    assert final.kind == "done"
    assert "Tokyo" in text


def test_llama_cpp_repeats_a_seeded_sampled_reply_even_after_the_same_prompt(shared_manager, spec_for):
    # The second and third requests find the prompt in llama.cpp's cache; a seeded request must not
    # reuse it, or the slightly different logits give another reply under the same seed.
    from models_app.serving.engines.contract import GenerationParams

    spec = spec_for("llama.cpp")
    shared_manager.load(spec)
    story = [{"role": "user", "content": "Write a long story about a dragon."}]
    sampled = GenerationParams(max_tokens=16, temperature=1.2, top_p=0.95, seed=7)
    replies = [collect(shared_manager.generate(spec.name, story, sampled))[0] for _ in range(3)]
    assert replies[0] and replies[0] == replies[1] == replies[2]


@pytest.mark.slow
@pytest.mark.parametrize("case", ["llama.cpp", "transformers-gguf"])
def test_a_reply_cut_by_a_stop_string_reports_which_one(shared_manager, spec_for, case):
    from dataclasses import replace

    spec = spec_for(case)
    shared_manager.load(spec)
    text, _, final = collect(shared_manager.generate(spec.name, FRANCE, replace(GREEDY, stop=["Lyon", "Paris"])))
    assert final.kind == "done" and "Paris" not in text
    assert (final.stats.finish_reason, final.stats.stop_sequence) == ("stop", "Paris")
    _, _, free = collect(shared_manager.generate(spec.name, FRANCE, GREEDY))
    assert free.stats.stop_sequence is None
