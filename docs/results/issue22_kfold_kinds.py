"""Issue 22, session 36: the cross-fit of issue22_kfold_eval.py with the defects found at each evaluation fold's own
2 % point split by kind (A: the mean over its four pairings), and the levels fitted for fold 2.

    PYTHONPATH=.:docs/results python docs/results/issue22_kfold_kinds.py CATEGORY   # reads /tmp/m36/cache
"""
import sys, json, numpy as np, torch
import issue22_kfold_eval as k
from models.scoring import either_map, fit_normal_stats
name=sys.argv[1]
data=[torch.load(f"/tmp/m36/cache/kf47_{name}_f{f}.pt", weights_only=False) for f in range(5)]
sig=data[0]["sigma"]; cl=[k._clean(d) for d in data]
def scores(cal, d):
    t,s,e=(torch.cat([getattr(c,x) for c in cal]) for x in ("terms","sil","edges"))
    st=fit_normal_stats(t,s,e,sigma=sig,colours=2)
    sc=torch.cat([either_map(d["terms"][i:i+64].float(),st,d["sil"][i:i+64].float(),d["edges"][i:i+64].float(),sig).flatten(1).amax(1) for i in range(0,len(d["terms"]),64)]).numpy()
    return sc, [round(x,2) for x in st.levels]
tot={"A":{}, "B":{}}
for f in range(5):
    d=data[f]; lab=d["labels"].numpy(); kinds=np.array(d["kinds"])
    others=[g for g in range(5) if g!=f]
    for arm,cals in [("A",[[cl[g]] for g in others]),("B",[[cl[g] for g in others]])]:
        for cal in cals:
            sc,lv=scores(cal,d); own=np.quantile(sc[~lab],0.98)
            for kk in sorted(set(kinds)-{"good"}):
                tot[arm][kk]=tot[arm].get(kk,0)+np.sum(sc[kinds==kk]>own)/(4 if arm=="A" else 1)
            if f==2: print(arm, lv)
print(name, json.dumps(tot))
