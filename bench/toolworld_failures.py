"""Where a tool-world model fails: for each failed episode of a run, the first step where its calls differ from
the expert's plan on the same task (wrong function, wrong argument, stopped early, invalid, ...), per level.

    python bench/toolworld_failures.py RUN/eval     # e.g. the eval dir of `lam pipeline --config configs/tools.yaml`
"""
import pyarrow.parquet as pq, glob, json, collections, sys
from agent.episode import RunnerConfig, run_episode
from agent.policies import ExpertPolicy
from envs.base import Task
from envs.registry import make_env
from serving.chat_format import parse_tool_calls
d = sys.argv[1]
eps=collections.defaultdict(list)
for f in sorted(glob.glob(d+'/**/*.parquet', recursive=True)):
    for r in pq.read_table(f).to_pylist():
        if r['policy']=='model' and r['env']=='toolworld': eps[r['episode_id']].append(r)
env=make_env('toolworld')
kinds=collections.Counter(); per=collections.defaultdict(collections.Counter); examples=collections.defaultdict(list)
def calls(text):
    c, cs = parse_tool_calls(text or '')
    return [(x['function']['name'], json.loads(x['function']['arguments'])) for x in cs], (c or '')
for eid, rows in eps.items():
    rows.sort(key=lambda r: r['step'])
    lvl=rows[0]['level']
    if rows[-1]['episode_success']:
        per[lvl]['ok']+=1; continue
    ex=run_episode(env, ExpertPolicy(), Task('toolworld', lvl, rows[0]['seed'], rows[0]['split']), RunnerConfig(max_steps=12))
    gold=[calls(s.action) for s in ex.steps]
    k='?'
    for i,(r) in enumerate(rows):
        mc, mt = calls(r['action'] if r['valid'] else r['raw_output'])
        if i>=len(gold): k='extra steps'; break
        gc, gt = gold[i]
        if mc==gc and (gc or mt==gt): continue
        if not r['valid']: k='invalid'
        elif gc and not mc: k='stopped early (Done)'
        elif not gc and mc: k='extra call after the goal'
        elif not gc and not mc: k='wrong final reply'
        elif mc[0][0]!=gc[0][0]: k='wrong function'
        else:
            bad=[a for a in gc[0][1] if mc[0][1].get(a)!=gc[0][1][a]]
            k='wrong argument'
        examples[k].append((eid, r['request'] if 'request' in r else '', i, mc, gc))
        break
    kinds[k]+=1; per[lvl][k]+=1
print(kinds)
for l in sorted(per): print(l, dict(per[l]))
for k,v in examples.items():
    print('##', k)
    for e in v[:3]: print('  ', e)
