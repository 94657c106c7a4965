"""No task waits on what can never happen: the dependency checks of a submission (pure; the API calls them).

With random ids a task can only name tasks that exist, so dependencies
cannot form a cycle; ids derived from an ``Idempotency-Key`` are known
before their tasks exist, so a request can name its own id (a task waiting
for itself) or close a cycle (two tasks of a batch each naming the other's
id). Such a task would stay ``pending`` for ever: nothing would ever resolve
it. ``dependency_problems`` finds them before anything is written, in the
request and through the tasks that already exist and still wait (the read
model: a request can close a cycle with a task written earlier), following
at most ``MAX_CYCLE_WALK`` existing tasks.

What the API cannot see (a cycle closed through a task another API process
wrote moments before, not yet in this one's read model, or beyond the walk)
the processor breaks where it shows (``closes_cycle``): a registration a
task receives from itself, or from one of its own dependencies, resolves
``unknown`` and is not recorded (``react``, ``evolve``), so both tasks end
``upstream_failed`` and a re-drive does not cascade around the cycle. An id that does not
exist when the processor folds the registration resolves ``unknown`` too,
whatever is created with that id later (docs/concepts.md: the bound).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from taskstream.schemas import Status, TaskState, ValidationError

#: How many existing tasks ``dependency_problems`` follows (through the read model) looking for a cycle.
MAX_CYCLE_WALK = 10_000

#: (request field prefix: "" or "tasks[i].", task id, its depends_on) per task of one request
Submitted = tuple[str, str, Sequence[str]]


def closes_cycle(upstream: TaskState, dependent: str) -> bool:
    """Whether ``dependent`` registering with ``upstream`` closes a cycle the processor can see: it is the upstream
    itself, or one of the upstream's own dependencies. ``evolve`` does not record it among the dependents (a
    re-drive must not cascade around the cycle) and ``react`` resolves it ``unknown``."""
    return dependent == upstream.task_id or dependent in upstream.depends_on


def waits_on(state: TaskState | None) -> list[str]:
    """The upstreams a task still waits for: those not yet resolved while it is ``pending``; else none."""
    if state is None or state.status != Status.PENDING.value:
        return []
    return [d for d in state.depends_on if d not in state.resolved]


def dependency_problems(tasks: Sequence[Submitted], known: Callable[[str], TaskState | None] = lambda _: None,
                        *, walk_limit: int = MAX_CYCLE_WALK) -> list[tuple[str, str]]:
    """Why tasks submitted together would wait for ever, as ``(field, message)``; empty when none would.

    A task whose ``depends_on`` holds its own id, and one cycle per task
    that is on one: through the request's tasks, and through existing tasks
    that still wait (``known``, the read model's lookup; ``waits_on``), at
    most ``walk_limit`` of them. Each names the dependency that closes it,
    ``<prefix>depends_on[j]``.
    """
    mine = {task_id: list(deps) for _, task_id, deps in tasks}
    edges: dict[str, list[str]] = {}
    walked = 0
    todo = list(mine)
    while todo:  # the graph: the request's tasks and the waiting tasks they reach, within the walk
        node = todo.pop()
        if node in edges:
            continue
        if node in mine:
            edges[node] = mine[node]
        elif walked < walk_limit:
            walked += 1
            edges[node] = waits_on(known(node))
        else:
            continue
        todo += [d for d in edges[node] if d not in edges]
    component = _components(edges)
    problems: list[tuple[str, str]] = []
    for prefix, task_id, deps in tasks:
        for j, dep in enumerate(deps):
            if dep == task_id:
                problems.append((f"{prefix}depends_on[{j}]", f"{task_id!r} is this task's own id (derived from "
                                 "Idempotency-Key): a task cannot wait for itself"))
                break
            if dep in component and component[dep] == component[task_id]:
                cycle = [task_id, *_path(edges, component, dep, task_id)]
                problems.append((f"{prefix}depends_on[{j}]", "dependency cycle: " + " -> ".join(cycle)
                                 + ": no task on it could ever start"))
                break
    return problems


def check_dependencies(tasks: Sequence[Submitted], known: Callable[[str], TaskState | None] = lambda _: None,
                       *, walk_limit: int = MAX_CYCLE_WALK) -> None:
    """Raise ``ValidationError`` naming every problem of ``dependency_problems``; nothing when there is none."""
    problems = dependency_problems(tasks, known, walk_limit=walk_limit)
    if problems:
        raise ValidationError.of(problems)


def _components(edges: dict[str, list[str]]) -> dict[str, int]:
    """Each node's strongly connected component (Tarjan's, iterative): nodes on one cycle share a number."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: dict[str, int] = {}
    for root in edges:
        if root in index:
            continue
        work = [(root, 0)]
        while work:
            node, i = work.pop()
            if i == 0:
                index[node] = low[node] = len(index)
                stack.append(node)
                on_stack.add(node)
            succ = edges.get(node, [])
            if i < len(succ):
                work.append((node, i + 1))
                nxt = succ[i]
                if nxt not in edges:
                    continue
                if nxt not in index:
                    work.append((nxt, 0))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            if low[node] == index[node]:
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    out[member] = index[node]
                    if member == node:
                        break
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
    return out


def _path(edges: dict[str, list[str]], component: dict[str, int], start: str, goal: str) -> list[str]:
    """The shortest path ``start`` ... ``goal`` inside their component (breadth first; one exists)."""
    came: dict[str, str | None] = {start: None}
    frontier = [start]
    while goal not in came:
        following = []
        for node in frontier:
            for n in edges.get(node, []):
                if n not in came and component.get(n) == component[goal]:
                    came[n] = node
                    following.append(n)
        frontier = following
    path = [goal]
    while (prev := came[path[-1]]) is not None:
        path.append(prev)
    return path[::-1]
