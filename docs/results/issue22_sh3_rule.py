"""Issue 22, session 39: the SH-degree-3 rule of docs/RESULTS.md (session 38) applied to the four categories'
arm-B summaries (``issue22_kfold_eval.py compare`` on seed 59): found at the threshold, the mean false-alarm rate on
unseen folds, each category's change.

    python docs/results/issue22_sh3_rule.py
"""
import json
names = {"Lego": ("lego", "session38"), "synth_0": ("synth0", "session38"), "synth_1": ("synth1", "session39"),
         "synth_2": ("synth2", "session39")}
tot = {1: [0, 0, [], 0, []], 3: [0, 0, [], 0, []]}
for cat, (tag, sess) in names.items():
    row = []
    for sh in (1, 3):
        b = json.load(open(f"docs/results/sh{sh}_seed59_{tag}_{sess}.json"))["summary"]["B_four_folds"]
        t = tot[sh]; t[0] += b["found_at_threshold"]; t[1] += b["of"]; t[2].append(b["mean_far"]); t[3] += b["found_at_own_2pct"]
        t[4].append(b["mean_image_auroc"])
        row.append((b["found_at_threshold"], b["of"], round(b["mean_far"], 4), round(b["mean_image_auroc"], 3), b["found_at_own_2pct"]))
    print(cat, "sh1", row[0], "sh3", row[1], f"change {row[1][0]-row[0][0]:+} ({100*(row[1][0]-row[0][0])/row[0][1]:+.2f} % of its defects)")
for sh, t in tot.items():
    print(f"SH{sh}: found {t[0]} of {t[1]}, mean FAR {sum(t[2])/4:.4f}, matched cut {t[3]}, mean AUROC {sum(t[4])/4:.4f}")
d = tot[3][0] - tot[1][0]
print(f"found +{d} = {100*d/tot[1][1]:.2f} % of {tot[1][1]} (rule >= 1 %: {d >= 0.01*tot[1][1]}); "
      f"mean FAR {100*(sum(tot[3][2])-sum(tot[1][2]))/4:+.2f} points (rule <= +0.5)")
