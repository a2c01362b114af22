"""KeepLayers (the ODM lineage's protocol): head, tail and upsampler at 8 bits or in float, the body at k bits."""

import pytest
import torch

from quantir.errors import ConfigError
from quantir.models import create_model
from quantir.quant.api import prepare_qat
from quantir.quant.config import KeepLayers, QuantConfig
from quantir.quant.exact import exact_conv2d
from quantir.quant.fake_quant import ActFakeQuantize, WeightFakeQuantize
from quantir.quant.layer_roles import layer_roles, model_path
from quantir.quant.rewrite import module_path

aten = torch.ops.aten


def _conv_bits(q) -> dict[str, tuple]:
    """module path of each conv -> (weight quant_max or None, output act quant_max or None)."""
    gm = q.graph_module
    mod = lambda n: gm.get_submodule(n.target) if n.op == "call_module" else None  # noqa: E731
    out = {}
    for n in gm.graph.nodes:
        if n.op != "call_function" or n.target not in (aten.conv2d.default, exact_conv2d):
            continue
        w = mod(n.args[1])
        users = list(n.users)
        if len(users) == 1 and users[0].op == "call_function" and users[0].target is aten.relu.default:
            users = list(users[0].users)  # a fused ReLU carries the conv's output range
        a = next((mod(u) for u in users if isinstance(mod(u), ActFakeQuantize)), None)  # where it gets quantized
        path = model_path(n)
        out[path] = (w.quant_max if isinstance(w, WeightFakeQuantize) else None, a.quant_max if a else None)
    return out


@pytest.fixture(scope="module")
def edsr():
    torch.manual_seed(0)
    return create_model("edsr_baseline", channels=8, res_blocks=2, scale=4).eval()  # two upsampler convs


def test_roles_of_edsr_found_from_the_graph(edsr):
    from quantir.quant.rewrite import export_nchw

    gm = export_nchw(edsr, torch.rand(2, 3, 12, 12) * 255)
    roles = {module_path(n): r for n, r in layer_roles(gm.graph).items()}
    assert roles["head"] == {"head"} and roles["tail"] == {"tail"}
    assert roles["upsample.convs.0"] == roles["upsample.convs.1"] == {"upsampler"}
    body = [p for p in roles if p.startswith("body")]
    assert len(body) == 5 and all(roles[p] == set() for p in body)  # 2 blocks x 2 convs + the closing conv


@pytest.mark.parametrize("mode", ["8bit", "float"])
def test_head_tail_upsampler_kept_body_at_k_bits(edsr, mode):
    cfg = QuantConfig(act_bits=4, weight_bits=4, keep=KeepLayers(mode=mode))
    bits = _conv_bits(prepare_qat(edsr, torch.rand(2, 3, 12, 12) * 255, cfg))
    # weight quant_max, output quant_max per kept layer. In float mode the head's output is quantized
    # where the k-bit body reads it, and what follows the tail stays float up to the int8 image output.
    want = {"8bit": {"head": (127, 127), "upsample.convs.0": (127, 127), "upsample.convs.1": (127, 127),
                     "tail": (127, 127)},
            "float": {"head": (None, 7), "upsample.convs.0": (None, None), "upsample.convs.1": (None, None),
                      "tail": (None, None)}}[mode]
    for path, got in bits.items():
        assert got == want.get(path, (7, 7)), (path, got)  # the body: W4A4
    assert set(bits) >= set(want)


def test_patterns_pick_layers_by_module_path(edsr):
    cfg = QuantConfig(act_bits=3, weight_bits=3, keep=KeepLayers(mode="8bit", roles=(), patterns=("body.0.*",)))
    bits = _conv_bits(prepare_qat(edsr, torch.rand(2, 3, 12, 12) * 255, cfg))
    assert {p for p, (w, _) in bits.items() if w == 127} == {"body.0.conv1", "body.0.conv2"}
    assert all(w == 3 for p, (w, _) in bits.items() if not p.startswith("body.0."))


def test_keep_rule_validates_and_float_layers_do_not_export():
    with pytest.raises(ConfigError, match="roles"):
        KeepLayers(mode="8bit", roles=("neck",))
    assert not QuantConfig(keep=KeepLayers(mode="float")).exportable
    assert QuantConfig(keep=KeepLayers(mode="8bit")).exportable


def _input_bits(q) -> dict[str, int | None]:
    """module path of each conv -> quant_max of the fake quantizer its input passes last (None: float)."""
    gm = q.graph_module
    out = {}
    for n in gm.graph.nodes:
        if n.op == "call_function" and n.target in (aten.conv2d.default, exact_conv2d):
            src = n.args[0]
            fq = gm.get_submodule(src.target) if src.op == "call_module" else None
            out[model_path(n)] = fq.quant_max if isinstance(fq, ActFakeQuantize) else None
    return out


@pytest.mark.parametrize("mode", ["8bit", "float"])
def test_kept_layers_read_kept_precision_and_the_body_reads_k_bits(edsr, mode):
    # The ODM lineage quantizes the input of every body conv to k bits (the first one's, after the
    # kept head, included) and feeds the tail/upsampler at their own precision (float or 8 bits).
    cfg = QuantConfig(act_bits=3, weight_bits=3, keep=KeepLayers(mode=mode))
    bits = _input_bits(prepare_qat(edsr, torch.rand(2, 3, 12, 12) * 255, cfg))
    kept = 127 if mode == "8bit" else None
    assert bits["upsample.convs.0"] == kept  # reads the global skip's sum
    assert bits["body.0.conv1"] == 3 and all(v == 3 for p, v in bits.items() if p.startswith("body"))


def test_a_float_head_with_its_relu_stays_float_on_the_global_skip():
    # The stem's fused ReLU was once re-annotated at k bits after the stem was kept in float, so the
    # global skip carried a k-bit head output (W2A2: 28.4 dB from the FP32 model where 8-bit kept
    # layers gave 38.5). Float head: only the body's input edge is quantized (k bits).
    torch.manual_seed(0)
    net = create_model("mobileone_sr", channels=8, blocks=2, stem_act=True).eval()
    q = prepare_qat(net, torch.rand(1, 3, 12, 12) * 255,
                    QuantConfig(act_bits=2, weight_bits=2, keep=KeepLayers(mode="float")))
    gm = q.graph_module
    relu = next(n for n in gm.graph.nodes if n.target is aten.relu.default)
    assert relu.args[0].target is aten.conv2d.default  # conv -> relu, nothing between
    readers = {u.target: u for u in relu.users}
    fq = [gm.get_submodule(u.target) for u in relu.users if u.op == "call_module"]
    assert [f.quant_max for f in fq] == [1]  # the body's k-bit input edge only
    assert aten.add.Tensor in readers  # the skip reads the float ReLU output itself


@pytest.mark.parametrize("mode", ["8bit", "float"])
def test_conv_inputs_scope_quantizes_conv_inputs_and_weights_only(edsr, mode):
    # The lineage's QConv2d (act_scope="conv_inputs"): each conv's input and weights get a fake
    # quantizer; residual adds, the global skip and the output stay float.
    cfg = QuantConfig(act_bits=3, weight_bits=3, keep=KeepLayers(mode=mode), act_scope="conv_inputs")
    q = prepare_qat(edsr, torch.rand(2, 3, 12, 12) * 255, cfg)
    kept = 127 if mode == "8bit" else None
    ins = _input_bits(q)
    assert all(v == 3 for p, v in ins.items() if p.startswith("body")) and len(ins) == 9
    assert ins["head"] == ins["tail"] == ins["upsample.convs.0"] == kept
    assert all(w == (kept if p in ("head", "tail") or p.startswith("upsample") else 3)
               for p, (w, _) in _conv_bits(q).items())
    # one activation quantizer per quantized conv input, none anywhere else (adds, skip, output)
    acts = [m for m in q.graph_module.modules() if isinstance(m, ActFakeQuantize)]
    assert len(acts) == sum(v is not None for v in ins.values())
    assert not cfg.exportable
    with pytest.raises(ConfigError, match="act_scope"):
        QuantConfig(act_scope="outputs")
