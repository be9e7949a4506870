// Canary routing decided per request from a small JSON state file, so a change of the split never reloads nginx.
//
// The file (CANARY_STATE_FILE in the template) is replaced atomically by `canary` (write a temporary file, then
// rename it): each request reads either the old state or the new one, whole, once, and every worker sees the new
// one from its next request on. A file that is missing, unreadable or invalid routes everything to blue, the
// stable version: never an error. Written for njs 0.7.9 (Debian 12) and 0.8.x (the official nginx image).

import fs from 'fs';

const FALLBACK = { green_weight: 0, shadow: false, green_slot: 'green_a', green_free: false, serial: null };
const SLOTS = ['green_a', 'green_b'];
const isWhole = (v) => Number.isInteger(v) && v >= 0;
const isVersion = (v) => v === null || typeof v === 'string';

// The state file's fields: the rule of each, and the value a file that leaves it out has (green_weight: none,
// it must be there). Unknown fields are ignored. The same rules as RoutingState in canary_kit/core/routing.py: both
// are tested against every case in tests/data/routing_states.json.
const FIELDS = [
    { name: 'green_weight', valid: (v) => isWhole(v) && v <= 100, rule: 'a whole number from 0 to 100' },
    { name: 'shadow', valid: (v) => typeof v === 'boolean', missing: false, rule: 'true or false' },
    { name: 'green_slot', valid: (v) => SLOTS.indexOf(v) >= 0, missing: 'green_a', rule: 'green_a or green_b' },
    { name: 'blue_version', valid: isVersion, missing: null, rule: 'a string or null' },
    { name: 'green_version', valid: isVersion, missing: null, rule: 'a string or null' },
    { name: 'serial', valid: isWhole, missing: 0, rule: 'a whole number from 0' },
    { name: 'changed_at', valid: (v) => typeof v === 'string', missing: '', rule: 'a string' },
];

// The file's content as a state with every field, or {problem} when it is not a valid state.
function parse(text) {
    let parsed;
    try {
        parsed = JSON.parse(text);
    } catch (e) {
        return { problem: String(e.message || e) };
    }
    if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed)) {
        return { problem: 'invalid state: not a JSON object' };
    }
    const fields = {};
    for (let i = 0; i < FIELDS.length; i++) {
        const field = FIELDS[i];
        const value = parsed[field.name] === undefined ? field.missing : parsed[field.name];
        if (!field.valid(value)) {
            return { problem: 'invalid state: ' + field.name + ' must be ' + field.rule };
        }
        fields[field.name] = value;
    }
    return fields;
}

// The state in force: {green_weight: 0-100, shadow: bool, green_slot, green_free, serial}, plus `problem` when it
// is the fallback. green_free: green serves no version (after `canary finalize`), so green's pins go to blue.
function state(r) {
    let s;
    try {
        s = parse(fs.readFileSync(r.variables.canary_state_file));
    } catch (e) {
        s = { problem: String(e.message || e) };
    }
    if (s.problem !== undefined) {
        return Object.assign({ problem: s.problem }, FALLBACK);
    }
    return {
        green_weight: s.green_weight,
        shadow: s.shadow,
        green_slot: s.green_slot,
        green_free: s.green_version === null && s.blue_version !== null,
        serial: s.serial,
        blue_version: s.blue_version,
        green_version: s.green_version,
    };
}

// A string's place in [0, 1): FNV-1a, then murmur3's finaliser so that similar ids spread evenly.
function unitHash(text) {
    let h = 0x811c9dc5;
    for (let i = 0; i < text.length; i++) {
        h ^= text.charCodeAt(i);
        h = Math.imul(h, 0x01000193);
    }
    h ^= h >>> 16;
    h = Math.imul(h, 0x85ebca6b);
    h ^= h >>> 13;
    h = Math.imul(h, 0xc2b2ae35);
    h ^= h >>> 16;
    return (h >>> 0) / 4294967296;
}

// The pin a request asks for, when pins apply to it: "green" (always), "blue" (never), or "" (none). The pin header
// wins over the pin cookie; any other value falls through, as ingress-nginx's canary-by-header does.
const PIN = { always: 'green', never: 'blue' };

function cookie(r, name) {
    const header = r.headersIn['Cookie'];
    if (!header) {
        return undefined;
    }
    const parts = header.split(';');
    for (let i = 0; i < parts.length; i++) {
        const part = parts[i].trim();
        if (part.slice(0, name.length + 1) === name + '=') {
            return part.slice(name.length + 1);
        }
    }
    return undefined;
}

function asked(r, pins) {
    return PIN[r.headersIn[pins.header]] || PIN[cookie(r, pins.cookie)] || '';
}

// js_set $canary_decision: "ROUTE PIN GREEN_UPSTREAM SHADOW BLUE_VERSION GREEN_VERSION", one read of the state per
// request, split by maps.
// Pins apply on the public port when the operator turned them on (CANARY_PINS), and always to requests through the
// admin server ($canary_operator). A pin never reaches a version at 0% from the public port: at green 0% a pin to
// green answers from blue (after `canary rollback` too), at 100% a pin to blue from green.
// ROUTE: "green" for green's share of requests, "blue" for the rest. With the user header (pins on) the draw is the
// id's hash, so a user keeps one version at a given weight and, because green takes the lowest hashes, a user on
// green stays on green as the weight rises; otherwise the draw is random. PIN: the pin honoured ("-": none).
// GREEN_UPSTREAM: the upstream of green's slot ("green_a" or "green_b"), or "blue" while green is free. SHADOW:
// "on" while predictions are mirrored to green. The versions ("-" for none) name what answers: a version name never
// holds a space (BentoML's tag rule).
function decide(r) {
    const s = state(r);
    let pins = {};
    try {
        pins = JSON.parse(r.variables.canary_pins || '{}');
    } catch (e) {
        pins = {};
    }
    const operator = r.variables.canary_operator === '1';
    const apply = pins.on === true || operator;
    const pin = apply ? asked(r, pins) : '';
    const user = apply && pins.user ? r.headersIn[pins.user] : undefined;
    const draw = user ? unitHash(user) : Math.random();
    let route = pin || (draw * 100 < s.green_weight ? 'green' : 'blue');
    if (!operator && ((route === 'green' && s.green_weight === 0) || (route === 'blue' && s.green_weight === 100))) {
        route = route === 'green' ? 'blue' : 'green';  // a version at 0% gets no request from the public port
    }
    const green = s.green_free ? 'blue' : s.green_slot;
    return [route, pin || '-', green, s.shadow ? 'on' : 'off', s.blue_version || '-', s.green_version || '-'].join(' ');
}

// js_set $canary_version: the version that answered, as the slot that answered serves it in the state this
// request was routed by. The last address in $upstream_addr answered; the local stack names its addresses'
// slots ($canary_slots). Elsewhere (compose's addresses are resolved names), an answer after a failover came from
// the other color: every backup server of an upstream is the other color's. "" when no backend answered.
function answered(r) {
    const known = r.variables.canary_answered;  // nginx asks twice (the header, the log): worked out once
    if (known) {
        return known === '-' ? '' : known;
    }
    const version = answeredBy(r);
    if (r.variables.upstream_addr) {
        r.variables.canary_answered = version || '-';
    }
    return version;
}

function answeredBy(r) {
    const tried = r.variables.upstream_addr;
    if (!tried) {
        return '';
    }
    const parts = r.variables.canary_decision.split(' ');
    // a try that names no address (an upstream at its cap) reached no server
    const addresses = tried.split(/, | : /).filter((a) => a.indexOf(':') >= 0);
    if (!addresses.length) {
        return '';
    }
    let slots = {};
    try {
        slots = JSON.parse(r.variables.canary_slots || '{}');
    } catch (e) {
        slots = {};
    }
    let color = slots[addresses[addresses.length - 1]];
    if (color === undefined) {
        const routed = r.variables.canary_served === 'green' ? 'green' : 'blue';
        color = addresses.length > 1 ? (routed === 'green' ? 'blue' : 'green') : routed;
    } else if (color !== 'blue') {
        color = color === parts[2] ? 'green' : '';  // green's other slot: a version being started, not routed
    }
    const version = color === 'blue' ? parts[4] : color === 'green' ? parts[5] : '-';
    return version === '-' || version === undefined ? '' : version;
}

// Where a prediction endpoint's answers hold the rows' predictions: the steps of a JSON path, as
// canary_kit/core/jsonpath.py compiles it (a name, an index, or "*" for the rows); the same rule as its select().
function select(steps, node) {
    for (let at = 0; at < steps.length; at++) {
        const step = steps[at];
        if (step === '*') {
            if (!Array.isArray(node)) {
                return null;
            }
            const rest = steps.slice(at + 1);
            const values = [];
            for (let i = 0; i < node.length; i++) {
                const found = select(rest, node[i]);
                if (found === null) {
                    return null;
                }
                values.push(found[0]);
            }
            return values;
        }
        if (typeof step === 'number') {
            if (!Array.isArray(node) || step >= node.length) {
                return null;
            }
        } else if (node === null || typeof node !== 'object' || Array.isArray(node) || !(step in node)) {
            return null;
        }
        node = node[step];
    }
    return [node];
}

// A row's confidence from what its path selects: a probability, or the largest of its probabilities (a list or
// an object of them); null when that is not numbers.
function top(value) {
    if (typeof value === 'number') {
        return value;
    }
    const numbers = Array.isArray(value) ? value : value !== null && typeof value === 'object' ?
        Object.keys(value).map((k) => value[k]) : [];
    let best = null;
    for (let i = 0; i < numbers.length; i++) {
        if (typeof numbers[i] !== 'number') {
            return null;
        }
        best = best === null || numbers[i] > best ? numbers[i] : best;
    }
    return best;
}

// Each row's confidence: per value selected, or per row of one selected object of equal-length lists (the
// columnar form, {"class": [p per row], ...}).
function confidences(selected) {
    let rows = selected;
    if (selected.length === 1 && selected[0] !== null && typeof selected[0] === 'object' &&
            !Array.isArray(selected[0])) {
        const lists = Object.keys(selected[0]).map((k) => selected[0][k]);
        if (lists.length && lists.every((l) => Array.isArray(l) && l.length === lists[0].length)) {
            rows = lists[0].map((_, i) => lists.map((l) => l[i]));
        }
    }
    const out = rows.map(top);
    return out.some((c) => c === null) ? null : out;
}

// A batch answer's predictions, read without parsing the answer: when they are its first member, an array of
// scalars ({"predictions": [...], "probabilities": ...}), the text from its `[` to the first `]` is that array, or
// is not valid JSON at all (JSON arrays are prefix-free): it is logged as it is, and the kit reads it (answers.py)
// as it reads any. Only the chunks up to that `]` are kept, so a batch's probabilities are never even joined.
const LARGE = 4096;  // bytes: a first chunk smaller than this is an answer parsed whole (microseconds)
const MAX_ANSWER = 8 * 1024 * 1024;  // bytes: larger answers are not read (they pass on untouched)
const OPEN = 91;  // [
const CLOSE = 93;  // ]

// Per answer (njs runs each request in a VM of its own): what is kept, how, and where the array starts.
let kept = [];
let size = 0;
let mode = '';  // '' (first chunk) | 'first' (the first member's array) | 'whole' | 'done'
let where = null;
let start = -1;

// The bytes of the first member's array once its `]` has arrived (nginx logs them as they are); undefined while it
// has not; null when the answer is not of that form after all (then it is parsed whole).
function firstArray(data) {
    const end = data.indexOf(CLOSE);
    if (end < 0) {
        return undefined;
    }
    const all = kept.length === 1 ? kept[0] : Buffer.concat(kept);
    const array = all.slice(start, all.length - data.length + end + 1);
    // Rows that are lists or objects are read whole (their own `]` would end this early). Otherwise the text up to
    // the first `]` is the whole array or no JSON at all: a `]` inside a class name fails these cheap looks at its
    // two ends, or leaves text the kit refuses (the answer is unobserved, never misread).
    const first = /^\[\s*(.)/.exec(array.slice(0, 64).toString());
    const flat = !first || (first[1] !== '[' && first[1] !== '{');
    const ends = /(^\[|["0-9el])\s*\]$/.test(array.slice(Math.max(0, array.length - 16)).toString());
    const next = /^\s*([,}]|$)/.test(data.slice(end + 1, end + 65).toString());
    return flat && ends && next && array.indexOf(10) < 0 ? array : null;  // one line in the log, as it is
}

const SPACE = [9, 10, 13, 32];

// Where the array that is the answer's first member, named `key`, begins ({"key": [ ...), or -1.
function arrayAfter(data, key) {
    let at = 0;
    const skip = () => {
        while (at < data.length && SPACE.indexOf(data[at]) >= 0) {
            at++;
        }
    };
    skip();
    if (data[at++] !== 123) {  // {
        return -1;
    }
    skip();
    const name = '"' + key + '"';
    if (data.slice(at, at + name.length).toString() !== name) {
        return -1;
    }
    at += name.length;
    skip();
    if (data[at++] !== 58) {  // :
        return -1;
    }
    skip();
    return data[at] === OPEN ? at : -1;
}

function begin(r, data) {
    if (r.status !== 200 || r.headersOut['Content-Encoding']) {
        return 'done';
    }
    where = JSON.parse(r.variables.canary_observe || '{}')[r.variables.canary_path];
    if (!where || !where.predictions) {
        return 'done';
    }
    const steps = where.predictions;
    const rows = steps.length === 2 && typeof steps[0] === 'string' && steps[1] === '*' && !where.confidence;
    if (!rows || data.length < LARGE) {
        return 'whole';
    }
    start = arrayAfter(data, steps[0]);
    return start < 0 ? 'whole' : 'first';
}

// At the answer's end: its predictions (and confidences) from the whole answer, parsed.
function whole(r) {
    const answer = JSON.parse((kept.length === 1 ? kept[0] : Buffer.concat(kept)).toString());
    const found = select(where.predictions, answer);
    if (found !== null) {
        r.variables.canary_predictions = JSON.stringify(found);
    }
    if (where.confidence) {
        const selected = select(where.confidence, answer);
        const rows = selected === null ? null : confidences(selected);
        if (rows !== null) {
            r.variables.canary_confidence = JSON.stringify(rows);
        }
    }
}

// js_body_filter (buffer_type=buffer) for the prediction endpoints: every chunk passes on at once; a 200 answer's
// predictions (and confidences, when the endpoint names where they are) are read into $canary_predictions and
// $canary_confidence for the access log. Nothing here can fail or delay an answer: an answer that is not what its
// path expects is logged without predictions, and the kit counts those.
function observe(r, data, flags) {
    r.sendBuffer(data, flags);
    if (mode === 'done') {
        return;
    }
    try {
        if (mode === '') {
            mode = begin(r, data);
            if (mode === 'done') {
                return;
            }
            if (mode === 'whole' && data.length === Number(r.headersOut['Content-Length'])) {
                kept.push(data);  // the whole answer in its first chunk: read now, not at the empty last one
                mode = 'done';
                r.done();
                whole(r);
                return;
            }
        }
        size += data.length;
        if (size > MAX_ANSWER) {
            mode = 'done';
            kept = [];
            return;
        }
        kept.push(data);
        if (mode === 'first') {
            const found = firstArray(data);
            if (found) {
                r.variables.canary_predictions = found;
                mode = 'done';
                kept = [];
                r.done();  // the rest of the answer passes on without calling this filter
                return;
            }
            mode = found === null ? 'whole' : 'first';
        }
        if (flags.last && mode === 'whole') {
            mode = 'done';
            whole(r);
        }
    } catch (e) {
        mode = 'done';
    }
}

// js_content for the admin server's /_nginx/split: the state this worker applies, its pid, and why when it is
// the fallback.
function describe(r) {
    const applied = state(r);
    applied.pid = process.pid;
    r.headersOut['Content-Type'] = 'application/json';
    r.return(200, JSON.stringify(applied) + '\n');
}

// js_content for the shadow relay: the copy is taken (and mirrored on to green); answer at once.
function accept(r) {
    r.return(204);
}

export default { accept, answered, decide, describe, observe, unitHash };
