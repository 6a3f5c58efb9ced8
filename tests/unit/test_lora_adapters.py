"""model.lora: the config rules, the PEFT wrapping (which tensors train, under which names they
travel), the adapter folder, the merged export and the base as reference -- in one process on a
small random Qwen2 (the integration tests run the same code in the learners and vLLM)."""

from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf

from rlhf.config import ConfigError, LoraConfig, RootConfig, to_schema, validate
from rlhf.models import lora
from rlhf.models.causal_lm import CausalLMPolicy
from rlhf.preflight import check_lora_targets


def _cfg(**lora_kwargs) -> RootConfig:
    return to_schema(OmegaConf.create({"model": {"lora": lora_kwargs}}))


@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({"rank": -1}, "model.lora.rank"),
        ({"rank": 8, "alpha": 0}, "model.lora.alpha"),
        ({"rank": 8, "alpha": -2.0}, "model.lora.alpha"),
        ({"rank": 8, "dropout": 1.0}, "model.lora.dropout"),
        ({"rank": 8, "target_modules": []}, "model.lora.target_modules"),
        (
            {"rank": 8, "target_modules": ["q_proj", "self_attn.q proj"]},
            "model.lora.target_modules",
        ),
        ({"rank": 1024}, "model.lora.rank"),
    ],
)
def test_bad_lora_config_names_the_key(kwargs, key):
    with pytest.raises(ConfigError) as e:
        validate(_cfg(**kwargs))
    assert e.value.key == key


def test_lora_off_by_rank_zero_or_null():
    assert not validate(_cfg(rank=0)).model.uses_lora
    off = to_schema(OmegaConf.create({"model": {"lora": None}}))
    assert off.model.lora is None and not validate(off).model.uses_lora
    # rank 0 ignores the other fields: full fine-tuning as before
    assert not validate(_cfg(rank=0, alpha=-1)).model.uses_lora
    assert validate(_cfg(rank=8)).model.uses_lora


def test_lora_needs_a_causal_lm():
    cfg = _cfg(rank=8)
    cfg.model.kind = "mlp"
    with pytest.raises(ConfigError) as e:
        cfg.model.check()
    assert e.value.key == "model.lora.rank"


def test_unknown_target_module_is_named_before_ray():
    cfg = validate(_cfg(rank=8, target_modules=["q_proj", "qkv_proj"]))
    with pytest.raises(ConfigError) as e:
        check_lora_targets(cfg)
    assert e.value.key == "model.lora.target_modules"
    assert "qkv_proj" in str(e.value) and "q_proj" in str(e.value)  # what it has
    check_lora_targets(validate(_cfg(rank=8)))  # the default targets exist in the tiny model


def test_lm_head_target_is_named_before_ray():
    """An nn.Linear, but vLLM refuses an adapter with an lm_head part at the first generate."""
    cfg = validate(_cfg(rank=8, target_modules=["q_proj", "lm_head"]))
    with pytest.raises(ConfigError, match=r"\['lm_head'\] are not linear layers") as e:
        check_lora_targets(cfg)
    assert e.value.key == "model.lora.target_modules"


def test_train_lm_head_checked_before_ray(tmp_path):
    """model.lora.train_lm_head: the tiny model's untied lm_head passes; a model that ties it
    to the input embeddings (vLLM would never load the trained head) is a config error."""
    from transformers import Qwen2Config

    assert not validate(_cfg(rank=8)).model.lora.train_lm_head  # off by default
    check_lora_targets(validate(_cfg(rank=8, train_lm_head=True)))  # the tiny model: untied
    Qwen2Config(
        vocab_size=40,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        tie_word_embeddings=True,
    ).save_pretrained(tmp_path)
    tied = _cfg(rank=8, train_lm_head=True)
    tied.model.path = str(tmp_path)
    with pytest.raises(ConfigError, match="tie_word_embeddings") as e:
        check_lora_targets(validate(tied))
    assert e.value.key == "model.lora.train_lm_head"
    untrained = _cfg(rank=8)  # the tied model is fine without a trained head
    untrained.model.path = str(tmp_path)
    check_lora_targets(validate(untrained))


def test_target_modules_checked_against_a_model_folder(tmp_path):
    from transformers import GPT2Config

    GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64).save_pretrained(tmp_path)
    cfg = _cfg(rank=8)  # Qwen2 names; GPT-2 has c_attn / c_proj (Conv1D, not Linear)
    cfg.model.path = str(tmp_path)
    with pytest.raises(ConfigError, match="not linear layers"):
        check_lora_targets(validate(cfg))


# ------------------------------------------------------------------ the wrapped policy


def _lm(seed=0):
    from transformers import AutoModelForCausalLM, Qwen2Config

    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=40,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=64,
        tie_word_embeddings=False,
    )
    return AutoModelForCausalLM.from_config(config).eval()


def _batch(seed=1, rows=3, length=10):
    """The two Batch fields a policy's forward reads."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 40, (rows, length), generator=g)
    return SimpleNamespace(input_ids=ids, attention_mask=torch.ones_like(ids))


def _randomise_b(policy):
    """A trained-looking adapter: PEFT starts B at 0 (adapter = identity)."""
    with torch.no_grad():
        for name, p in policy.lm.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)


LORA = LoraConfig(rank=4, alpha=8.0)


def test_only_the_adapter_trains_and_reaches_the_optimizer():
    base = CausalLMPolicy(_lm())
    n_base = sum(p.numel() for p in base.parameters())
    policy = lora.add_adapter(CausalLMPolicy(_lm()), LORA)
    trainable = {n for n, p in policy.named_parameters() if p.requires_grad}
    assert trainable and all("lora_A" in n or "lora_B" in n for n in trainable)
    # 7 projections x 2 layers x (A, B)
    assert len(trainable) == 7 * 2 * 2
    grouped = [p for g in policy.param_groups(1e-3, 1e-3) for p in g["params"]]
    assert {id(p) for p in grouped} == {
        id(p) for n, p in policy.named_parameters() if p.requires_grad
    }
    # the frozen base is all of the original parameters
    frozen = sum(p.numel() for p in policy.parameters() if not p.requires_grad)
    assert frozen == n_base


def test_fresh_adapter_is_the_base_and_rollout_state_is_adapter_only():
    batch = _batch()
    base = CausalLMPolicy(_lm())
    policy = lora.add_adapter(CausalLMPolicy(_lm()), LORA)
    with torch.no_grad():
        assert torch.equal(base(batch)[0], policy(batch)[0])
    from peft import get_peft_model_state_dict

    names = [n for n, _ in policy.rollout_state()]
    # exactly the names PEFT saves (and vLLM loads), in a stable order
    assert set(names) == set(get_peft_model_state_dict(policy.lm))
    assert all(n.startswith("base_model.model.model.layers.") for n in names)
    assert all(".default." not in n for n in names)
    sent = sum(p.numel() for _, p in policy.rollout_state())
    full = sum(p.numel() for _, p in base.rollout_state())
    assert sent < 0.2 * full


def test_adapter_folder_loads_back_in_peft(tmp_path):
    from peft import PeftModel

    batch = _batch()
    policy = lora.add_adapter(CausalLMPolicy(_lm()), LORA)
    _randomise_b(policy)
    lora.write_adapter_folder(tmp_path, {n: p.detach() for n, p in policy.rollout_state()}, LORA)
    loaded = CausalLMPolicy(PeftModel.from_pretrained(_lm(), tmp_path).eval())
    with torch.no_grad():
        want, got = policy(batch)[0], loaded(batch)[0]
        assert torch.allclose(want, got, atol=1e-6)
        assert (want - CausalLMPolicy(_lm())(batch)[0]).abs().max() > 1e-3  # adapter matters


def test_merged_state_equals_the_adapted_model(tmp_path):
    batch = _batch()
    _lm().save_pretrained(tmp_path / "base")
    policy = lora.add_adapter(CausalLMPolicy(_lm()), LORA)
    _randomise_b(policy)
    adapter = {n: p.detach() for n, p in policy.rollout_state()}
    state = lora.merged_state(str(tmp_path / "base"), adapter, LORA, "float32")
    assert not any("lora" in k for k in state)
    plain = _lm(seed=5)  # other weights, overwritten by the merged ones
    plain.load_state_dict(state)
    with torch.no_grad():
        assert torch.allclose(policy(batch)[0], CausalLMPolicy(plain)(batch)[0], atol=1e-5)


class _EngineOf:
    """What BaseReference needs of a DeepSpeed engine: `module` and `__call__`."""

    def __init__(self, policy):
        self.module = policy

    def __call__(self, b, with_entropy=False):
        return self.module(b, with_entropy=with_entropy)


def test_base_reference_is_the_model_without_its_adapter():
    batch = _batch()
    policy = lora.add_adapter(CausalLMPolicy(_lm()), LORA)
    _randomise_b(policy)

    with torch.no_grad():
        ref = lora.BaseReference(_EngineOf(policy))(batch)[0]
        assert torch.equal(ref, CausalLMPolicy(_lm())(batch)[0])
        assert (policy(batch)[0] - ref).abs().max() > 1e-3  # the adapter is back on after


LORA_HEAD = LoraConfig(rank=4, alpha=8.0, train_lm_head=True)


def _train_head(policy):
    """A trained-looking lm_head copy (PEFT's modules_to_save starts as the original)."""
    with torch.no_grad():
        for name, p in policy.lm.named_parameters():
            if ".modules_to_save." in name:
                p.add_(torch.randn_like(p) * 0.5)


def test_train_lm_head_trains_a_copy_and_the_state_splits():
    """train_lm_head: lm_head trains in full (a copy), the original stays frozen; the rollout
    state is the adapter under PEFT's names, then lm_head.weight under its HF name, and
    split_state hands the engine the two parts (the adapter folder, the base model)."""
    policy = lora.add_adapter(CausalLMPolicy(_lm()), LORA_HEAD)
    trainable = {n for n, p in policy.named_parameters() if p.requires_grad}
    heads = {n for n in trainable if "lora_" not in n}
    assert heads == {"lm.base_model.model.lm_head.modules_to_save.default.weight"}
    assert len(trainable) == 7 * 2 * 2 + 1
    grouped = [p for g in policy.param_groups(1e-3, 1e-3) for p in g["params"]]
    assert len(grouped) == len(trainable)

    named = list(policy.rollout_state())
    assert named[-1][0] == "lm_head.weight"
    head = policy.lm.base_model.model.lm_head.modules_to_save["default"].weight
    assert named[-1][1] is head  # the trained copy, not the frozen original
    adapter, base = lora.split_state(named)
    assert list(base) == ["lm_head.weight"]
    assert set(adapter) == {n for n, _ in lora.adapter_state(policy.lm)}
    # a PEFT folder's names: what get_peft_model_state_dict saves (lm_head as modules_to_save)
    from peft import get_peft_model_state_dict

    assert set(lora.peft_folder_state(named)) == set(get_peft_model_state_dict(policy.lm))
    # the default (7 projections) state is the adapter alone: nothing for the base
    plain = lora.add_adapter(CausalLMPolicy(_lm()), LORA)
    assert lora.split_state(plain.rollout_state())[1] == {}


def test_reference_keeps_the_original_lm_head():
    """With the adapter disabled the policy is the base, original lm_head included, however
    far the trained copy moved."""
    batch = _batch()
    policy = lora.add_adapter(CausalLMPolicy(_lm()), LORA_HEAD)
    _randomise_b(policy)
    _train_head(policy)

    with torch.no_grad():
        ref = lora.BaseReference(_EngineOf(policy))(batch)[0]
        assert torch.equal(ref, CausalLMPolicy(_lm())(batch)[0])
        assert (policy(batch)[0] - ref).abs().max() > 1e-3


def test_lm_head_exports_load_back(tmp_path):
    """The export's PEFT folder (lm_head as modules_to_save) and merged state reproduce the
    policy; the engines' folder config leaves modules_to_save out (vLLM refuses lm_head there)
    and the lm_head goes into a base model: base + that folder = the policy too."""
    from peft import PeftModel
    from vllm.lora.peft_helper import PEFTHelper

    batch = _batch()
    _lm().save_pretrained(tmp_path / "base")
    policy = lora.add_adapter(CausalLMPolicy(_lm()), LORA_HEAD)
    _randomise_b(policy)
    _train_head(policy)
    state = {n: p.detach() for n, p in policy.rollout_state()}
    folder_state = lora.peft_folder_state(state.items())
    lora.write_adapter_folder(tmp_path / "peft", folder_state, LORA_HEAD)
    merged = _lm(seed=5)
    merged.load_state_dict(
        lora.merged_state(str(tmp_path / "base"), folder_state, LORA_HEAD, "float32")
    )

    adapter, base = lora.split_state(state.items())
    lora.write_adapter_folder(tmp_path / "engine", adapter, LORA_HEAD, for_vllm=True)
    assert PEFTHelper.from_local_dir(str(tmp_path / "engine"), None).modules_to_save is None
    with pytest.raises(ValueError, match="modules_to_save"):
        PEFTHelper.from_local_dir(str(tmp_path / "peft"), None).validate_legal(
            SimpleNamespace(max_lora_rank=8)
        )
    engine_base = _lm()
    engine_base.load_state_dict(base, strict=False)  # what the engine's base load does
    served = PeftModel.from_pretrained(engine_base, tmp_path / "engine").eval()
    with torch.no_grad():
        want = policy(batch)[0]
        assert (want - CausalLMPolicy(_lm())(batch)[0]).abs().max() > 1e-3
        for name, model in (
            ("peft folder", PeftModel.from_pretrained(_lm(), tmp_path / "peft").eval()),
            ("merged", merged),
            ("engine: base with lm_head + adapter", served),
        ):
            assert torch.allclose(want, CausalLMPolicy(model)(batch)[0], atol=1e-5), name


def test_vllm_rank_choice():
    assert [lora.vllm_max_lora_rank(r) for r in (1, 2, 8, 9, 300, 512)] == [
        1,
        8,
        8,
        16,
        320,
        512,
    ]


def test_adapter_slot_versions_each_load_and_keeps_one_folder():
    """The engine side's bookkeeping (rlhf/rollout/lora_sync.py): a new adapter id per load (so
    vLLM takes each as a new adapter), the weight version in the name, one folder on disk, a
    config vLLM's PEFT reader accepts."""
    from vllm.lora.peft_helper import PEFTHelper

    from rlhf.rollout.lora_sync import EXTENSION, AdapterSlot

    slot = AdapterSlot(LoraConfig(rank=4, alpha=8.0))
    args = slot.engine_args()
    assert args["enable_lora"] and args["max_lora_rank"] == 8
    assert args["worker_extension_cls"] == EXTENSION and args["max_loras"] == 1
    assert slot.request is None  # before the first sync: the base alone
    first, first_id = slot.next_load()
    helper = PEFTHelper.from_local_dir(first, None)
    assert (helper.r, helper.lora_alpha) == (4, 8.0)
    assert slot.next_load() == (first, first_id) == (first, 1)  # a failed receive: the same
    slot.installed(first, 0, "tensors")
    assert (slot.request.lora_name, slot.request.lora_int_id) == ("policy-v0", 1)
    assert slot.source == "tensors"
    second, second_id = slot.next_load()
    slot.installed(second, 0, "folder")  # the same version again (a resume): still a new id
    assert slot.request.lora_int_id == second_id == 2 and slot.request.lora_path == second
    third, _ = slot.next_load()
    slot.installed(third, 1, "tensors")
    assert slot.request.lora_name == "policy-v1"
    assert [str(p) for p in slot.root.iterdir()] == [third]


class _Received:
    """A stand-in for the weight-sync group on the engine side: yields a rollout state."""

    def __init__(self, state):
        self.state = state

    def receive(self):
        yield from self.state.items()


def test_receiver_without_a_lora_manager_writes_the_folder(tmp_path):
    """The fallback of receive_adapter: a worker with no LRU LoRA manager to register with
    (another vLLM runner) gets the PEFT folder that vLLM reads at the next generate, with
    exactly the received tensors; the in-worker path itself runs in
    tests/integration/test_lora.py on a real engine."""
    from safetensors.torch import load_file

    from rlhf.rollout.lora_sync import VllmAdapterReceiver

    policy = lora.add_adapter(CausalLMPolicy(_lm()), LORA)
    state = {n: torch.randn(p.shape) for n, p in lora.adapter_state(policy.lm)}
    receiver = VllmAdapterReceiver()
    receiver._rlhf_sync = _Received(state)
    receiver.model_runner = SimpleNamespace()  # no lora_manager
    lora.write_adapter_config(tmp_path, LORA, for_vllm=True)
    assert receiver.receive_adapter(str(tmp_path), 1) == "folder"
    saved = load_file(str(tmp_path / lora.ADAPTER_WEIGHTS))
    assert saved.keys() == state.keys()
    assert all(torch.equal(saved[n], t) for n, t in state.items())


def test_adapter_gets_gradients_under_gradient_checkpointing():
    """model.gradient_checkpointing with a frozen base: the checkpointed blocks' inputs need
    grad for the adapter inside them to get any (PEFT arranges it when wrapping)."""
    lm = _lm()
    lm.gradient_checkpointing_enable()
    policy = lora.add_adapter(CausalLMPolicy(lm), LORA)
    policy.train()
    policy(_batch())[0].sum().backward()
    grads = {n: p.grad for n, p in policy.named_parameters() if p.requires_grad}
    assert all(g is not None for g in grads.values())
    # B starts at 0, so A's first gradient is 0; every B, in every block, gets one
    assert all(float(g.abs().sum()) > 0 for n, g in grads.items() if "lora_B" in n)
