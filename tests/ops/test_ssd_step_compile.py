"""The fused SSD decoding step (ops/ssd/step_kernels.py) and the DMA step inputs (ops/dma/step_input_kernels.py)
compile for a Hopper GPU (sm_90) without one, for every rope mode / mask form and dtype: Triton's code generator
rejects what its interpreter runs (a loop-carried variable whose type changes in the loop broke the "data" rope
mode on the GPU only, session 6)."""
import pytest

from conftest import compile_for_sm90, compiles_real_kernels

pytest.importorskip("triton")

pytestmark = compiles_real_kernels

SSD_STEP = {"proj_ptr": "*{dt}", "state_ptr": "*fp32", "y_ptr": "*{dt}", "dt_bias_ptr": "*fp32", "a_log_ptr": "*fp32",
            "d_ptr": "*fp32", "pos_ptr": "*i64", "inv_freq_ptr": "*fp32", "rate_ptr": "*fp32", "angle_ptr": "*fp32",
            "s_proj": "i32", "s_pos": "i32", "s_rate": "i32", "x_off": "i32", "b_off": "i32", "c_off": "i32",
            "dt_off": "i32", "H": "i32", "P": "i32", "heads_per_group": "i32", "rows_per_program": "i32",
            "dt_lo": "fp32", "dt_hi": "fp32", "two_pi": "fp32", "N": "constexpr", "HALF": "constexpr",
            "BLOCK_H": "constexpr", "BLOCK_P": "constexpr", "ROPE": "constexpr", "HAS_D": "constexpr"}
DMA_INPUTS = {"q_ptr": "*{dt}", "k_ptr": "*{dt}", "dt_ptr": "*{dt}", "pos_ptr": "*i64", "inv_freq_ptr": "*fp32",
              "a_ptr": "*fp32", "q_out": "*{dt}", "k_out": "*{dt}", "bias_out": "*fp32", "pos_out": "*i64",
              "sqb": "i32", "sqh": "i32", "skb": "i32", "skh": "i32", "sdb": "i32", "spb": "i32", "hq": "i32",
              "hkv": "i32", "HALF": "constexpr", "BLOCK": "constexpr", "GATE": "constexpr"}


@pytest.mark.parametrize("rope", ["none", "fixed", "data"])
@pytest.mark.parametrize("dt", ["bf16", "fp16", "fp32"])
def test_ssd_decode_step_compiles_for_sm90(rope, dt):
    from wonderful_matrices.ops.ssd import step_kernels

    signature = {k: v.format(dt=dt) for k, v in SSD_STEP.items()}
    constants = {"N": 128, "HALF": 64, "BLOCK_H": 64, "BLOCK_P": step_kernels.BLOCK_P,
                 "ROPE": step_kernels.ROPE_CODES[rope], "HAS_D": True}
    compile_for_sm90(step_kernels._decode_step_kernel, signature, constants, num_warps=4)


@pytest.mark.parametrize("mask_form", ["gate", "doge"])
@pytest.mark.parametrize("dt", ["bf16", "fp16", "fp32"])
def test_dma_step_inputs_compile_for_sm90(mask_form, dt):
    from wonderful_matrices.ops.dma import step_input_kernels

    signature = {k: v.format(dt=dt) for k, v in DMA_INPUTS.items()}
    constants = {"HALF": 32, "BLOCK": 32, "GATE": step_input_kernels.MASK_FORMS[mask_form] == 1}
    compile_for_sm90(step_input_kernels._step_inputs_kernel, signature, constants, num_warps=1)
