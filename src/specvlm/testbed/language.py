"""Scene -> words: a detailed caption and questions of several kinds, every answer computed from the event log.

The wording varies (synonyms, several templates per fact, clause and object order, optional prefixes) so that the
language is not trivially predictable, but the *content* never does: each question has one canonical short answer
(`answer`, e.g. "left", "three", "yes", "the red circle bounces off the left edge") that the answer sentence always
contains, and `is_correct` scores a model's reply against it.

Canonical object names are "the <colour> <shape>" with the colour the object has at the moment in question (its
first colour when no moment is implied); questions may name objects more loosely ("the small red disc", "the circle
that starts out red"), which the world's uniqueness rules keep unambiguous.
"""

from __future__ import annotations

import re

import numpy as np

from .world import COLORS, REGIONS, SHAPES, SIZES, Obj, Scene, region, region_margin

DESCRIBE_PROMPT = (
    "Please provide a detailed description of the video, focusing on the main subjects, their actions, "
    "and the background scenes."
)  # SpecVLM's fixed long-form prompt; also one of ours
CAPTION_PROMPTS = (
    DESCRIBE_PROMPT,
    "Describe this video in detail.",
    "Describe the video in detail.",
    "What happens in this video? Describe it in detail.",
    "Give a detailed description of the clip.",
    "Please describe everything that happens in the video.",
    "Write a detailed caption for this video.",
    "Tell me in detail what you see in this clip.",
    "Can you describe the video in detail?",
    "Narrate the clip in detail, from beginning to end.",
)
QUESTION_KINDS = (
    "color",
    "shape",
    "count",
    "first",
    "last",
    "direction",
    "appearance",
    "existence",
    "collision",
    "position",
    "size",
    "speed",
)
# how often each kind is asked: the four single-fact kinds the testbed's accuracy goals name (colour, shape, count,
# direction) three times as often as in world version 1, so a model sees enough of each to learn to read the video
KIND_WEIGHTS = {
    "color": 3.0,
    "shape": 3.0,
    "count": 3.0,
    "first": 1.0,
    "last": 1.0,
    "direction": 3.0,
    "appearance": 0.8,
    "existence": 0.8,
    "collision": 0.6,
    "position": 0.8,
    "size": 0.6,
    "speed": 0.6,
}

NUMBERS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve")
SHAPE_WORDS = {
    "circle": ("circle", "disc"),
    "square": ("square",),
    "triangle": ("triangle",),
    "star": ("star",),
    "diamond": ("diamond", "rhombus"),
    "hexagon": ("hexagon",),
    "cross": ("cross", "plus sign"),
}
DIRECTIONS = (
    "left",
    "right",
    "up",
    "down",
    "up and to the left",
    "up and to the right",
    "down and to the left",
    "down and to the right",
    "does not move",
)
REGION_NAMES = tuple(r for row in REGIONS for r in row)
_LOCATION = {
    "top left": ("in the top left corner", "at the top left"),
    "top": ("at the top", "near the top edge"),
    "top right": ("in the top right corner", "at the top right"),
    "left side": ("on the left side", "on the left"),
    "centre": ("in the centre", "in the middle"),
    "right side": ("on the right side", "on the right"),
    "bottom left": ("in the bottom left corner", "at the bottom left"),
    "bottom": ("at the bottom", "near the bottom edge"),
    "bottom right": ("in the bottom right corner", "at the bottom right"),
}
_DIR_PHRASES = {
    "left": ("to the left", "left", "leftward"),
    "right": ("to the right", "right", "rightward"),
    "up": ("up", "upward", "towards the top"),
    "down": ("down", "downward", "towards the bottom"),
}
_TEXTURE_PHRASES = {
    "plain": ("a plain {bg} background", "a plain {bg} backdrop", "a uniform {bg} background"),
    "noise": ("a {bg} background with a faint grainy texture", "a slightly grainy {bg} background"),
    "stripes": ("a {bg} background with faint horizontal stripes", "a {bg} backdrop with soft horizontal stripes"),
    "gradient": (
        "a {bg} background that gets slightly lighter towards the bottom",
        "a {bg} background with a soft vertical gradient",
    ),
    "grid": ("a {bg} background with a faint grid", "a {bg} backdrop covered by a faint grid"),
}


def number(n: int) -> str:
    return NUMBERS[n] if 0 <= n < len(NUMBERS) else str(n)


def plural(word: str) -> str:
    return word + ("es" if word.endswith(("s", "x")) else "s")


def article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


def cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def canon(o: Obj, frame: int | None = None) -> str:
    """The canonical name: 'the <colour> <shape>', colour at `frame` (first colour when None)."""
    return f"the {o.color if frame is None else o.color_at(frame)} {o.shape}"


def direction_phrase(d: str) -> str:
    return {"left": "to the left", "right": "to the right"}.get(d, d)


class Language:
    """Words for one scene. All choices come from `rng`, so a seed fixes the wording too."""

    def __init__(self, scene: Scene, rng: np.random.Generator):
        self.s, self.rng = scene, rng
        self.objs = scene.objects
        self.syn = {o.id: self.pick(SHAPE_WORDS[o.shape]) for o in self.objs}  # one synonym per object per text

    # ---- helpers ------------------------------------------------------------------------------------------------
    def pick(self, options):
        options = list(options)
        return options[int(self.rng.integers(len(options)))]

    def chance(self, p: float) -> bool:
        return bool(self.rng.random() < p)

    def changer(self, o: Obj) -> bool:
        return len(o.colors) > 1

    def unique_shape(self, o: Obj) -> bool:
        return sum(p.shape == o.shape for p in self.objs) == 1

    def ref(self, o: Obj, size: bool = True) -> str:
        """A varied but unambiguous name for questions."""
        word = self.pick(SHAPE_WORDS[o.shape])
        if self.changer(o):
            return self.pick(
                [f"the {word}", f"the {o.shape} that starts out {o.color}", f"the {o.shape} that is {o.color} at first"]
            )
        if size and self.chance(0.25):
            return f"the {o.size} {o.color} {word}"
        if self.chance(0.15):
            return f"the {word} that is {o.color}"
        return f"the {o.color} {word}"

    def name(self, o: Obj, frame: int) -> str:
        """Caption reference after the introduction: current colour, the caption's synonym."""
        return f"the {o.color_at(frame)} {self.syn[o.id]}"

    def motion(self, o: Obj, d: str | None, speed: str | None) -> str:
        if d is None or speed is None:
            return self.pick(["stays still", "does not move", "remains in place", "sits still"])
        verbs = ["moves", "travels", "glides"] + (["drifts", "creeps"] if speed == "slowly" else ["zooms", "races"])
        verb = self.pick(verbs)
        if d in _DIR_PHRASES:
            where = self.pick(_DIR_PHRASES[d])
        else:
            v, h = d.split(" and to the ")
            where = self.pick([d, f"diagonally {d}", f"towards the {'top' if v == 'up' else 'bottom'} {h}"])
        implied = verb in ("drifts", "creeps", "zooms", "races")
        return f"{verb} {where}" if implied and self.chance(0.6) else f"{verb} {speed} {where}"

    def location(self, x: float, y: float) -> str:
        return self.pick(_LOCATION[region(x, y)])

    def background(self) -> str:
        return self.pick(_TEXTURE_PHRASES[self.s.texture]).format(bg=self.s.background)

    def prefix(self, question: str) -> str:
        """Order variation: an occasional leading 'In the video, ...'."""
        if self.chance(0.15):
            return (
                self.pick(["In the video, ", "In this clip, ", "Looking at the video, "])
                + question[0].lower()
                + question[1:]
            )
        return question

    # ---- caption -------------------------------------------------------------------------------------------------
    def caption(self) -> str:
        s = self.s
        starters = [o for o in self.objs if o.first == 0]
        n = len(starters)
        noun = self.pick(["object", "shape"])
        count = f"{number(n)} {noun if n == 1 else plural(noun)}"
        bg_first = self.chance(0.7)
        bg = self.background()
        if bg_first:
            opening = self.pick(
                [
                    f"The video shows {count} on {bg}.",
                    f"In this clip, {count} {'is' if n == 1 else 'are'} shown on {bg}.",
                    f"This short animation shows {count} against {bg}.",
                    f"The clip begins with {count} on {bg}.",
                ]
            )
        else:
            opening = self.pick(
                [f"The video shows {count}.", f"The clip begins with {count}.", f"This short animation shows {count}."]
            )
        sentences = [opening]
        order = [starters[i] for i in self.rng.permutation(n)]
        for o in order:
            a = f"a {o.size} {o.color} {self.syn[o.id]}"
            loc = self.location(*o.start_pos)
            mot = self.motion(o, o.motion[0][1], o.speed)
            form = int(self.rng.integers(3))
            if form == 0:
                sentences.append(f"{cap(a)} is {loc} and {mot}.")
            elif form == 1:
                sentences.append(f"{cap(loc)} there is {a}, which {mot}.")
            else:
                sentences.append(f"{cap(a)} {mot}, starting {loc}.")

        groups: dict[int, list[dict]] = {}
        for e in s.events:
            groups.setdefault(e["frame"], []).append(e)
        frames = sorted(groups)
        for gi, t in enumerate(frames):
            clauses = [self.event_clause(e) for e in groups[t]]
            text = (
                clauses[0]
                if len(clauses) == 1
                else ", ".join(clauses[:-1]) + self.pick([", and at the same time ", " while "]) + clauses[-1]
            )
            if gi == 0:
                conn = self.pick(["Then", "After a moment", "Soon", "First"])
            elif gi == len(frames) - 1 and len(frames) > 2 and self.chance(0.6):
                conn = self.pick(["Finally", "In the end", "Last of all"])
            else:
                conn = self.pick(["Then", "After that", "Next", "Later", "A moment later", "Soon after"])
            sentences.append(f"{conn}, {text}.")
        if not frames:
            still = all(o.speed is None for o in self.objs)
            sentences.append(
                self.pick(
                    ["Nothing else happens; everything stays still until the end."]
                    if still
                    else [
                        "Nothing else happens: the motion continues until the end.",
                        "No other events take place during the clip.",
                        "Nothing else happens until the end of the video.",
                    ]
                )
            )
        if not bg_first:
            sentences.append(
                self.pick(
                    [f"All of this happens on {bg}.", f"Everything takes place on {bg}.", f"The scene is set on {bg}."]
                )
            )
        if self.chance(0.75):
            sentences.append(self.ending())
        return " ".join(sentences)

    def event_clause(self, e: dict) -> str:
        t = e["frame"]
        o = self.objs[e["objects"][0]]
        kind = e["type"]
        if kind == "appear":
            a = f"{self.pick(['a', 'a new'])} {o.size} {o.color} {self.syn[o.id]}"
            verb = self.pick(["appears", "shows up", "pops into view"])
            return f"{a} {verb} {self.location(*o.start_pos)} and {self.motion(o, o.motion[0][1], o.speed)}"
        if kind == "disappear":
            return f"{self.name(o, t - 1)} {self.pick(['disappears', 'vanishes', 'disappears from view', 'is gone'])}"
        if kind == "color_change":
            old = self.name(o, t - 1)
            return self.pick(
                [
                    f"{old} turns {e['to']}",
                    f"{old} changes colour from {e['from']} to {e['to']}",
                    f"{old} becomes {e['to']}",
                    f"{old} changes its color to {e['to']}",
                ]
            )
        if kind == "bounce":
            walls = e["walls"]
            if len(walls) == 2:
                corner = f"{walls[1]} {walls[0]}"  # walls are listed left/right first, then top/bottom
                hit = f"bounces out of the {corner} corner"
            else:
                hit = self.pick(
                    [
                        f"bounces off the {walls[0]} edge",
                        f"hits the {walls[0]} wall and bounces back",
                        f"rebounds from the {walls[0]} side",
                    ]
                )
            clause = f"{self.name(o, t)} {hit}"
            if self.chance(0.5):
                clause += (
                    f"{' and now' if ' and ' not in hit else ', then'} {self.motion(o, o.direction_at(t), o.speed)}"
                )
            return clause
        b = self.objs[e["objects"][1]]
        a_name, b_name = self.name(o, t), self.name(b, t)
        if o.speed is None or b.speed is None:
            mover, wall = (b, o) if o.speed is None else (o, b)
            return self.pick(
                [
                    f"{self.name(mover, t)} bumps into {self.name(wall, t)} and bounces back",
                    f"{self.name(mover, t)} hits {self.name(wall, t)} and rebounds",
                ]
            )
        return self.pick(
            [
                f"{a_name} and {b_name} collide and bounce apart",
                f"{a_name} bumps into {b_name} and they bounce apart",
                f"{a_name} and {b_name} hit each other and move apart",
            ]
        )

    def ending(self) -> str:
        t = self.s.n_frames - 1
        left = [o for o in self.objs if o.visible(t)]
        if not left:
            return self.pick(["At the end, the frame is empty.", "By the last frame, no objects are left."])
        names = [self.name(o, t) for o in left]
        listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
        if len(left) == 1:
            return self.pick([f"At the end, only {listed} is left.", f"By the last frame, only {listed} remains."])
        return self.pick(
            [f"At the end, {number(len(left))} objects are visible: {listed}.", f"By the last frame, {listed} remain."]
        )

    # ---- questions -----------------------------------------------------------------------------------------------
    def questions(self, n: int) -> list[tuple[str, str, str, str]]:
        """n (kind, question, answer sentence, canonical answer) tuples, kinds drawn by weight, no repeats."""
        out, seen = [], set()
        kinds = list(QUESTION_KINDS)
        weights = np.array([KIND_WEIGHTS[k] for k in kinds])
        tries = 0
        while len(out) < n and tries < 20 * n:
            tries += 1
            kind = kinds[int(self.rng.choice(len(kinds), p=weights / weights.sum()))]
            qa = getattr(self, f"q_{kind}")()
            if qa is None:
                weights[kinds.index(kind)] *= 0.5  # rarely applicable here: ask it less
                continue
            q, a_text, a = qa
            q = self.prefix(q)
            if q in seen:
                continue
            seen.add(q)
            out.append((kind, q, a_text, a))
        return out

    def yes_no(self, value: bool, aux: str) -> tuple[str, str]:
        word = "yes" if value else "no"
        neg = {"is": "is not", "does": "does not", "do": "do not", "there is": "there is not"}[aux]
        full = aux if value else neg
        if aux == "there is":
            return self.pick([f"{cap(word)}.", f"{cap(word)}, {full}."]), word
        return self.pick(
            [f"{cap(word)}.", f"{cap(word)}, it {full}." if aux != "do" else f"{cap(word)}, they {full}."]
        ), word

    def q_color(self):
        cands = [o for o in self.objs if self.unique_shape(o)]
        if not cands:
            return None
        o = self.pick(cands)
        word = self.pick(SHAPE_WORDS[o.shape])
        col = self.pick(["colour", "color"])
        if not self.changer(o):
            q = self.pick(
                [
                    f"What {col} is the {word}?",
                    f"Which {col} does the {word} have?",
                    f"What is the {col} of the {word}?",
                    f"Tell me the {col} of the {word}.",
                    f"The {word} in the video: what {col} is it?",
                ]
            )
            c = o.color
        elif self.chance(0.5):
            q = self.pick(
                [
                    f"What {col} is the {word} at the start?",
                    f"Which {col} does the {word} have at first?",
                    f"What {col} is the {word} at the beginning of the video?",
                ]
            )
            c = o.color
        else:
            q = self.pick(
                [
                    f"What {col} does the {word} turn into?",
                    f"What {col} does the {word} change to?",
                    f"Which {col} is the {word} after it changes?",
                ]
            )
            c = o.colors[-1][1]
        return q, self.pick([f"{cap(c)}.", f"It is {c}.", f"The {o.shape} is {c}."]), c

    def q_shape(self):
        owners: dict[str, set[int]] = {}
        for o in self.objs:
            for c in o.ever_colors:
                owners.setdefault(c, set()).add(o.id)
        colors = [c for c, ids in owners.items() if len(ids) == 1]
        if not colors:
            return None
        c = self.pick(colors)
        o = self.objs[next(iter(owners[c]))]
        q = self.pick(
            [
                f"What shape is the {c} object?",
                f"Which shape is {c}?",
                f"What is the shape of the {c} object?",
                f"The {c} thing in the clip: what shape is it?",
                f"What kind of shape is the {c} one?",
            ]
        )
        return (
            q,
            self.pick([f"A {o.shape}.", f"It is a {o.shape}.", f"The {c} object is a {o.shape}.", f"{cap(o.shape)}."]),
            o.shape,
        )

    def q_count(self):
        n_frames = self.s.n_frames
        sub = self.pick(["total", "start", "end", "shape", "color"])
        thing = self.pick(["objects", "shapes"])
        if sub == "total":
            k = len(self.objs)
            q = self.pick(
                [
                    f"How many {thing} appear in the video?",
                    f"How many {thing} are there in total?",
                    f"How many different {thing} can be seen over the whole clip?",
                    f"Count all the {thing} that show up in the video.",
                ]
            )
        elif sub == "start":
            k = sum(o.first == 0 for o in self.objs)
            q = self.pick(
                [
                    f"How many {thing} are visible at the start?",
                    f"How many {thing} are in the first frame?",
                    f"At the beginning, how many {thing} can you see?",
                ]
            )
        elif sub == "end":
            k = sum(o.visible(n_frames - 1) for o in self.objs)
            q = self.pick(
                [
                    f"How many {thing} are visible at the end?",
                    f"How many {thing} remain in the last frame?",
                    f"By the end of the video, how many {thing} are left?",
                ]
            )
        elif sub == "shape":
            present = sorted({o.shape for o in self.objs})
            shape = self.pick(present) if self.chance(0.8) else self.pick(SHAPES)
            k = sum(o.shape == shape for o in self.objs)
            word = plural(self.pick(SHAPE_WORDS[shape]))
            q = self.pick(
                [
                    f"How many {word} are there?",
                    f"How many {word} appear in the video?",
                    f"Count the {word} in the clip.",
                ]
            )
        else:
            present = sorted({o.color for o in self.objs if o.first == 0})
            c = self.pick(present) if self.chance(0.8) else self.pick(COLORS)
            k = sum(o.first == 0 and o.color == c for o in self.objs)
            q = self.pick(
                [f"How many {c} {thing} are there at the start?", f"At the beginning, how many {thing} are {c}?"]
            )
        w = number(k)
        if k == 0:
            a = self.pick(["Zero.", "There are zero."])
        elif k == 1:
            a = self.pick(["One.", "There is one.", "Just one."])
        else:
            a = self.pick([f"{cap(w)}.", f"There are {w}.", f"I count {w}."])
        return q, a, w

    def clause(self, e: dict) -> str:
        """An event in canonical words: what first/last answers contain."""
        t, o = e["frame"], self.objs[e["objects"][0]]
        kind = e["type"]
        if kind == "appear":
            return f"{canon(o, t)} appears"
        if kind == "disappear":
            return f"{canon(o, t - 1)} disappears"
        if kind == "color_change":
            return f"{canon(o, t - 1)} turns {e['to']}"
        if kind == "bounce":
            walls = e["walls"]
            edge = f"the {walls[0]} edge" if len(walls) == 1 else f"the {walls[0]} and {walls[1]} edges"
            return f"{canon(o, t)} bounces off {edge}"
        return f"{canon(o, t)} and {canon(self.objs[e['objects'][1]], t)} collide"

    def _first_last(self, last: bool):
        ev = self.s.events
        if not ev:
            return None
        clauses = [self.clause(e) for e in ev]
        once = [i for i, c in enumerate(clauses) if clauses.count(c) == 1]
        pairs = [(i, j) for i in once for j in once if ev[i]["frame"] < ev[j]["frame"]]
        edge_t = ev[-1]["frame"] if last else ev[0]["frame"]
        at_edge = [i for i, e in enumerate(ev) if e["frame"] == edge_t]
        if len(at_edge) == 1 and (not pairs or self.chance(0.6)):
            c = clauses[at_edge[0]]
            if last:
                q = self.pick(
                    [
                        "What happens last?",
                        "What is the last event in the video?",
                        "What is the final thing that happens in the clip?",
                    ]
                )
                a = self.pick([f"Finally, {c}.", f"{cap(c)}.", f"The last thing that happens is that {c}."])
            else:
                q = self.pick(
                    [
                        "What happens first in the video?",
                        "What is the first thing that happens?",
                        "What is the first event in the clip?",
                        "Which event comes first?",
                    ]
                )
                a = self.pick([f"First, {c}.", f"{cap(c)}.", f"The first thing that happens is that {c}."])
            return q, a, c
        if not pairs:
            return None
        i, j = self.pick(pairs)
        c = clauses[j] if last else clauses[i]
        x, y = (clauses[i], clauses[j]) if self.chance(0.5) else (clauses[j], clauses[i])
        when = "last" if last else "first"
        later = "later" if last else "earlier"
        q = self.pick(
            [
                f"Which happens {when}: {x}, or {y}?",
                f"Which comes {when}, {x} or {y}?",
                f"What happens {later}: {x}, or {y}?",
            ]
        )
        a = self.pick([f"{cap(c)} happens {when}.", f"{cap(c)}.", f"{cap(later)}, {c}."])
        return q, a, c

    def q_first(self):
        return self._first_last(last=False)

    def q_last(self):
        return self._first_last(last=True)

    def q_direction(self):
        o = self.pick(self.objs)
        r = self.ref(o)
        dirs = [d for _, d in o.motion]
        if len(dirs) == 1:
            q = self.pick(
                [
                    f"In which direction does {r} move?",
                    f"Which way is {r} moving?",
                    f"Where is {r} heading?",
                    f"Which direction does {r} travel in?",
                ]
            )
            d = dirs[0]
        elif self.chance(0.5):
            q = self.pick(
                [
                    f"In which direction does {r} move at the start?",
                    f"Which way is {r} moving at first?",
                    f"Where is {r} heading at the beginning?",
                ]
            )
            d = dirs[0]
        else:
            q = self.pick(
                [
                    f"In which direction does {r} move at the end?",
                    f"Which way is {r} going in the end?",
                    f"After its last change of direction, which way does {r} move?",
                ]
            )
            d = dirs[-1]
        if d is None:
            return (
                q,
                self.pick(
                    ["It does not move.", "It does not move; it stays still.", f"{cap(canon(o))} does not move at all."]
                ),
                "does not move",
            )
        p = direction_phrase(d)
        return q, self.pick([f"{cap(p)}.", f"It moves {p}.", f"{cap(canon(o))} moves {p}."]), d

    def q_appearance(self):
        n = self.s.n_frames
        late = [o for o in self.objs if o.first > 0]
        gone = [o for o in self.objs if o.last < n - 1]
        options = (
            ["start", "gone"] + (["which_late"] if len(late) == 1 else []) + (["which_gone"] if len(gone) == 1 else [])
        )
        sub = self.pick(options)
        if sub == "which_late":
            o = late[0]
            q = self.pick(
                [
                    "Which object appears partway through the video?",
                    "Which shape shows up later in the clip?",
                    "What new object appears during the video?",
                ]
            )
            c = canon(o)
            return q, self.pick([f"{cap(c)}.", f"{cap(c)} appears later.", f"It is {c}."]), c
        if sub == "which_gone":
            o = gone[0]
            q = self.pick(
                ["Which object disappears?", "Which shape vanishes during the clip?", "What disappears in the video?"]
            )
            c = canon(o, o.last)
            return q, self.pick([f"{cap(c)}.", f"{cap(c)} disappears.", f"It is {c}."]), c
        o = self.pick(self.objs)
        r = self.ref(o)
        if sub == "start":
            if self.chance(0.5):
                q = self.pick([f"Is {r} there from the start?", f"Is {r} visible in the first frame?"])
                a, w = self.yes_no(o.first == 0, "is")
            else:
                q = self.pick([f"Does {r} appear partway through the video?", f"Does {r} show up later?"])
                a, w = self.yes_no(o.first > 0, "does")
        else:
            if self.chance(0.5):
                q = self.pick([f"Does {r} disappear?", f"Does {r} vanish at some point?"])
                a, w = self.yes_no(o.last < n - 1, "does")
            else:
                q = self.pick([f"Is {r} still visible at the end?", f"Is {r} there in the last frame?"])
                a, w = self.yes_no(o.last == n - 1, "is")
        return q, a, w

    def q_existence(self):
        present = {(c, o.shape) for o in self.objs for c in o.ever_colors}
        if self.chance(0.5):
            c, shape = self.pick(sorted(present))
        else:
            absent = [(c, s) for c in COLORS for s in SHAPES if (c, s) not in present]
            c, shape = self.pick(absent)
        word = self.pick(SHAPE_WORDS[shape])
        value = (c, shape) in present
        if self.chance(0.5):
            q = self.pick(
                [
                    f"Is there {article(c)} {c} {word} in the video?",
                    f"Is there {article(c)} {c} {word} anywhere in the clip?",
                ]
            )
            a, w = self.yes_no(value, "there is")
        else:
            q = self.pick(
                [
                    f"Does {article(c)} {c} {word} appear in the clip?",
                    f"Does {article(c)} {c} {word} show up at any point?",
                ]
            )
            a, w = self.yes_no(value, "does")
        return q, a, w

    def q_collision(self):
        hits = [e for e in self.s.events if e["type"] == "collide"]
        sub = self.pick(["count", "pair"] + (["which"] if hits else []))
        if sub == "count":
            k = len(hits)
            q = self.pick(
                [
                    "How many collisions happen in the video?",
                    "How many times do two objects collide?",
                    "How many collisions between objects are there?",
                ]
            )
            w = number(k)
            a = self.pick(
                ["Zero.", "None; there are zero collisions."]
                if k == 0
                else ["One.", "There is one collision."]
                if k == 1
                else [f"{cap(w)}.", f"There are {w}."]
            )
            return q, a, w
        pairs = {tuple(sorted(e["objects"])) for e in hits}
        if sub == "which":
            partners: dict[int, list[tuple[int, int]]] = {}
            for e in hits:
                a_id, b_id = e["objects"]
                partners.setdefault(a_id, []).append((b_id, e["frame"]))
                partners.setdefault(b_id, []).append((a_id, e["frame"]))
            single = [i for i, ps in partners.items() if len({p for p, _ in ps}) == 1]
            if not single:
                return None
            i = self.pick(single)
            j, t = partners[i][0]
            c = canon(self.objs[j], t)
            q = self.pick(
                [
                    f"Which object does {self.ref(self.objs[i])} collide with?",
                    f"What does {self.ref(self.objs[i])} bump into?",
                ]
            )
            return q, self.pick([f"{cap(c)}.", f"It collides with {c}."]), c
        overlap = [
            (a.id, b.id)
            for a in self.objs
            for b in self.objs
            if a.id < b.id and max(a.first, b.first) <= min(a.last, b.last)
        ]
        if not overlap:
            return None
        yes = sorted(pairs)
        no = [p for p in overlap if p not in pairs]
        pair = self.pick(yes) if yes and (not no or self.chance(0.5)) else self.pick(no)
        a, b = (self.objs[i] for i in pair)
        if self.chance(0.5):
            a, b = b, a
        ra, rb = self.ref(a), self.ref(b)
        if self.chance(0.5):
            q = f"Do {ra} and {rb} collide?"
            ans, w = self.yes_no(pair in pairs, "do")
        else:
            q = self.pick([f"Does {ra} hit {rb}?", f"Does {ra} bump into {rb} at some point?"])
            ans, w = self.yes_no(pair in pairs, "does")
        return q, ans, w

    def q_position(self):
        cands = [(o, "start") for o in self.objs if region_margin(*o.start_pos) > 0.05] + [
            (o, "end") for o in self.objs if o.speed and region_margin(*o.end_pos) > 0.05
        ]
        if not cands:
            return None
        o, when = self.pick(cands)
        r = self.ref(o)
        if when == "start":
            reg = region(*o.start_pos)
            q = self.pick(
                [
                    f"Where is {r} at the start?",
                    f"In which part of the frame is {r} at the beginning?",
                    f"Where does {r} start?",
                ]
            )
        else:
            reg = region(*o.end_pos)
            q = self.pick(
                [
                    f"Where is {r} when it is last seen?",
                    f"Where does {r} end up?",
                    f"In which part of the frame is {r} at the end?",
                ]
            )
        loc = _LOCATION[reg][0]
        return (
            q,
            self.pick([f"{cap(loc)}.", f"It is {loc}.", f"{cap(reg)}." if reg != "centre" else "In the centre."]),
            reg,
        )

    def q_size(self):
        if len({o.size for o in self.objs}) > 1 and self.chance(0.4):
            a, b = (self.objs[i] for i in self.rng.permutation(len(self.objs))[:2])
            if a.size != b.size:
                bigger = self.chance(0.5)
                word = "bigger" if bigger else "smaller"
                order = list(SIZES)
                win = a if (order.index(a.size) > order.index(b.size)) == bigger else b
                q = self.pick(
                    [
                        f"Which is {word}, {self.ref(a, False)} or {self.ref(b, False)}?",
                        f"Which one is {'larger' if bigger else 'smaller'}: {self.ref(a, False)} or "
                        f"{self.ref(b, False)}?",
                    ]
                )
                c = canon(win)
                return q, self.pick([f"{cap(c)}.", f"{cap(c)} is {word}."]), c
        o = self.pick(self.objs)
        r = self.ref(o, size=False)
        q = self.pick([f"How big is {r}?", f"What size is {r}?", f"Is {r} small, medium or large?"])
        sz = "medium-sized" if o.size == "medium" and self.chance(0.5) else o.size
        return q, self.pick([f"It is {sz}.", f"{cap(sz)}.", f"{cap(canon(o))} is {sz}."]), o.size

    def q_speed(self):
        movers = [o for o in self.objs if o.speed]
        if not movers:
            return None
        o = self.pick(movers)
        r = self.ref(o)
        q = self.pick([f"Does {r} move quickly or slowly?", f"How fast does {r} move?", f"Is {r} fast or slow?"])
        return q, self.pick([f"{cap(o.speed)}.", f"It moves {o.speed}.", f"{cap(canon(o))} moves {o.speed}."]), o.speed


def conversations(scene: Scene, rng: np.random.Generator, questions: int = 5) -> list[dict]:
    """One caption conversation plus `questions` question conversations for a scene:
    [{"kind", "question", "answer_text", "answer"}]."""
    lang = Language(scene, rng)
    out = [{"kind": "caption", "question": lang.pick(CAPTION_PROMPTS), "answer_text": lang.caption(), "answer": None}]
    for kind, q, _, a in lang.questions(questions):
        out.append({"kind": kind, "question": q, "answer_text": short_answer(a), "answer": a})
    return out


def short_answer(answer: str) -> str:
    """The reply the world's conversations give: the canonical answer as one short sentence ("Red.", "Up and to
    the left.", "The red circle appears."). The question wording varies, the reply does not: with several reply
    templates per kind (world version 1) a from-scratch model's first reply token was a coin toss between "The",
    "It" and the answer, and 750-step targets answered every question with the same "The pink." (see
    docs/DESIGN.md, Testbed)."""
    return f"{cap(answer)}."


# ---- scoring ------------------------------------------------------------------------------------------------------
_ALIASES = {
    "center": "centre",
    "middle": "centre",
    "fast": "quickly",
    "slow": "slowly",
    "none": "zero",
    "medium-sized": "medium",
    "color": "colour",
    "disc": "circle",
    "rhombus": "diamond",
    "plus sign": "cross",
    "leftward": "left",
    "rightward": "right",
    "upward": "up",
    "downward": "down",
    "stays still": "does not move",
    "doesn't move": "does not move",
}
_CATEGORIES = {
    "yesno": ("yes", "no"),
    "color": tuple(COLORS),
    "shape": SHAPES,
    "number": NUMBERS + tuple(str(i) for i in range(len(NUMBERS))),
    "direction": DIRECTIONS,
    "region": REGION_NAMES,
    "size": tuple(SIZES),
    "speed": ("quickly", "slowly"),
}


def _normalise(text: str) -> str:
    text = " " + re.sub(r"[^a-z0-9\- ]+", " ", text.lower()) + " "
    for k in sorted(_ALIASES, key=len, reverse=True):
        text = re.sub(rf"(?<![a-z]){re.escape(k)}(?![a-z])", _ALIASES[k], text)
    return re.sub(r"\s+", " ", text)


def _found(text: str, values) -> list[str]:
    """Values of one category in `text`, longest first, each span used once."""
    hits = []
    for v in sorted(values, key=len, reverse=True):
        pattern = rf"(?<![a-z0-9]){re.escape(v)}(?![a-z0-9])"
        if re.search(pattern, text):
            hits.append(v)
            text = re.sub(pattern, " # ", text)
    return hits


def is_correct(prediction: str, answer: str) -> bool:
    """Does a model's reply give the canonical `answer`? For closed categories (yes/no, colours, shapes, numbers,
    directions, regions, sizes, speeds) the reply must name the answer and no other value of its category (digits
    count as number words); for free answers (object names, event clauses) it must contain the answer."""
    text = _normalise(prediction)
    ans = _normalise(answer).strip()
    for cat, values in _CATEGORIES.items():
        if ans in values:
            found = _found(text, values)
            if cat == "number":
                found = {NUMBERS[int(v)] if v.isdigit() and int(v) < len(NUMBERS) else v for v in found}
                return found == {ans if not ans.isdigit() else NUMBERS[int(ans)]}
            return set(found) == {ans}
    return f" {ans} " in text
