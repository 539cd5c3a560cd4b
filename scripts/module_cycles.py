"""Module cycles: reads each crate's modules and the modules each one names through `crate::`
and `super::` paths (test modules left out) into a graph, and prints its strongly connected
components larger than one module. Usage: python3 scripts/module_cycles.py server trainer ..."""
import re, glob, os, sys
def modname(root, path):
    rel = os.path.relpath(path, root)[:-3]
    parts = rel.split('/')
    if parts[-1] in ('mod', 'lib', 'main'): parts = parts[:-1]
    return '::'.join(parts)
failed = False
for crate in sys.argv[1:]:
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', crate, 'src')
    files = glob.glob(root + '/**/*.rs', recursive=True)
    mods = {modname(root, f): f for f in files}
    graph = {}
    for m, f in mods.items():
        text = open(f).read()
        text = text.split('#[cfg(test)]')[0]
        deps = set()
        for ref in re.findall(r'crate::([a-z_]+(?:::[a-z_]+)*)', text):
            parts = ref.split('::')
            # the longest prefix that is a module
            for k in range(len(parts), 0, -1):
                cand = '::'.join(parts[:k])
                if cand in mods:
                    deps.add(cand); break
        if m and '::' in m or m:
            parent = m.rsplit('::', 1)[0] if '::' in m else ''
            for ref in re.findall(r'super::([a-z_]+)', text):
                cand = (parent + '::' + ref) if parent else ref
                if cand in mods: deps.add(cand)
        deps.discard(m)
        # a module naming its own descendants through crate:: paths is its own business
        graph[m] = {d for d in deps if not d.startswith(m + '::') or m == ''}
    # Tarjan
    index = {}; low = {}; stack = []; on = set(); sccs = []; counter = [0]
    sys.setrecursionlimit(10000)
    def strong(v):
        index[v] = low[v] = counter[0]; counter[0] += 1; stack.append(v); on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                strong(w); low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop(); on.discard(w); comp.append(w)
                if w == v: break
            sccs.append(comp)
    for v in graph:
        if v not in index: strong(v)
    cycles = [c for c in sccs if len(c) > 1]
    print(crate, len(mods), 'modules;', 'cycles:', cycles if cycles else 'none')
    if cycles:
        failed = True
sys.exit(1 if failed else 0)
