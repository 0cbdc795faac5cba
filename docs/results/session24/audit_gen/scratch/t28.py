import sys; sys.path.insert(0, "/tmp/audit_gen/scratch")
from h import *
from wonderful_matrices.models.cache import CheemsCache
variants = [("cheems", dict(ssd_rope="data")), ("cheems", dict(ssd_use_conv=True)), ("cheems", dict(ssd_num_groups=2)),
            ("doge", dict(dma_mask_form="none")), ("doge", dict(dma_mask_form="doge")), ("doge", dict(dma_qk_norm=True)),
            ("cheems", dict(residual_scale=True)), ("doge", dict(keep_window=1)), ("cheems", dict(ssd_rope="none")),
            ("mamba2", dict(mamba2_num_groups=2)), ("jamba", dict(moe_implementation="loop")), ("cheems", dict(ssd_backend="naive"))]
for fam, over in variants:
    m = build(fam, **over)
    worst=0
    for trial in range(3):
        torch.manual_seed(trial)
        lens=[3, 21]; W=21
        ids = torch.randint(1,512,(2,W+6)); mask = torch.ones(2, W, dtype=torch.long); mask[0,:W-3]=0
        c = CheemsCache(m.config)
        with torch.no_grad():
            outs=[m(ids[:, :W], attention_mask=mask, past_key_values=c, use_cache=True, prefill_chunk_tokens=[None,4,7][trial]).logits]
            for t in range(W, W+6):
                mask = torch.cat([mask, torch.ones(2,1,dtype=torch.long)],1)
                outs.append(m(ids[:, t:t+1], attention_mask=mask, past_key_values=c, use_cache=True).logits)
            lg=torch.cat(outs,1)
            r0 = m(ids[:1, W-3:], use_cache=False).logits[0]; r1 = m(ids[1:], use_cache=False).logits[0]
        worst=max(worst, rel(lg[0, W-3:], r0), rel(lg[1], r1))
    print(fam, over, "%.1e" % worst)
