import pytest
import torch

from core.catalog import MODEL_CATALOG
from core.errors import InputError
from workers.model import LlamaModel, load_safetensors, random_weights, save_safetensors
from workers.reference import DenseDecoder, dense_generate, dense_logits
from workers.tokenizer import ByteTokenizer

ARCH = MODEL_CATALOG["Tiny-Llama-2L"]


def test_random_weights_are_a_function_of_the_seed() -> None:
    a, b, c = random_weights(ARCH, 3), random_weights(ARCH, 3), random_weights(ARCH, 4)
    assert torch.equal(a.layers[1].wqkv, b.layers[1].wqkv)
    assert not torch.equal(a.layers[1].wqkv, c.layers[1].wqkv)
    assert a.nbytes == sum(t.numel() for t in a.tensors()) * 4


def test_safetensors_round_trip_gives_the_same_logits(tmp_path) -> None:
    weights = random_weights(ARCH, 5)
    save_safetensors(weights, tmp_path)
    loaded = load_safetensors(ARCH, tmp_path)
    ids = ByteTokenizer().encode("paged attention")
    torch.testing.assert_close(dense_logits(LlamaModel(loaded), ids), dense_logits(LlamaModel(weights), ids))


def test_loading_names_the_missing_or_misshapen_tensor(tmp_path) -> None:
    with pytest.raises(InputError, match="safetensors"):
        load_safetensors(ARCH, tmp_path)
    save_safetensors(random_weights(MODEL_CATALOG["Tiny-Llama-4L"], 0), tmp_path)
    with pytest.raises(InputError, match=r"model\.layers\.0\.self_attn\.q_proj\.weight.*shape \(64, 64\)"):
        load_safetensors(ARCH, tmp_path)


def test_dense_decoder_with_a_kv_cache_matches_recomputation() -> None:
    model = LlamaModel(random_weights(ARCH, 6))
    prompts = [[256, 1, 2, 3], [256, 9, 8, 7, 6, 5, 4]]
    decoder = DenseDecoder(model, batch_size=2, max_tokens=32)
    tokens = decoder.prefill(prompts)
    outputs = [[int(t)] for t in tokens]
    for _ in range(5):
        tokens = decoder.decode(tokens)
        for out, t in zip(outputs, tokens.tolist(), strict=True):
            out.append(t)
    assert outputs == [dense_generate(model, p, 6) for p in prompts]


def test_byte_tokenizer_round_trips_text_and_drops_special_ids() -> None:
    tok = ByteTokenizer()
    ids = tok.encode("héllo")
    assert ids[0] == tok.bos_id and tok.decode(ids + [tok.eos_id]) == "héllo"
