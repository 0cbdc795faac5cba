"""(suspected) The balance loss counts padding tokens: CDMoE takes no mask, so the routing statistics (f and P) of
padded positions enter aux_loss. Same real tokens, same labels; only padding (attention_mask 0, labels -100) added."""
import warnings
warnings.filterwarnings("ignore")
import torch
import wonderful_matrices as wm

torch.manual_seed(0)
cfg = wm.presets.get("cheems-tiny", balance_loss_weight=1.0, pad_token_id=0)
model = wm.CheemsForCausalLM(cfg).train()
x = torch.randint(1, cfg.vocab_size, (1, 10))
out = model(x, labels=x, use_cache=False)
for pad in (5, 30):
    xp = torch.cat([x, torch.zeros(1, pad, dtype=torch.long)], 1)
    mask = torch.cat([torch.ones(1, 10), torch.zeros(1, pad)], 1).long()
    labels = xp.masked_fill(mask == 0, -100)
    outp = model(xp, attention_mask=mask, labels=labels, use_cache=False)
    print(f"right padding {pad:2d}: CE {(outp.loss - outp.aux_loss).item():.6f} (unpadded {(out.loss - out.aux_loss).item():.6f}); "
          f"aux_loss {outp.aux_loss.item():.6f} (unpadded {out.aux_loss.item():.6f})")
