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
// it must be there). Unknown fields are ignored. The same rules as RoutingState in canary_kit/routing.py: both
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

// js_set $canary_decision: "ROUTE GREEN_UPSTREAM SHADOW BLUE_VERSION GREEN_VERSION", one read of the state per
// request, split by maps.
// ROUTE: "green" for green's share of requests, "blue" for the rest. With X-User-ID the draw is the id's hash, so
// a user keeps one version at a given weight and, because green takes the lowest hashes, a user on green stays
// on green as the weight rises; without it the draw is random. GREEN_UPSTREAM: the upstream of green's slot
// ("green_a" or "green_b"), or "blue" while green is free. SHADOW: "on" while predictions are mirrored to green.
// The versions ("-" for none) name what answers: a version name never holds a space (BentoML's tag rule).
function decide(r) {
    const s = state(r);
    const user = r.headersIn['X-User-ID'];
    const draw = user ? unitHash(user) : Math.random();
    const route = draw * 100 < s.green_weight ? 'green' : 'blue';
    const green = s.green_free ? 'blue' : s.green_slot;
    return [route, green, s.shadow ? 'on' : 'off', s.blue_version || '-', s.green_version || '-'].join(' ');
}

// js_set $canary_version: the version that answered, as the slot that answered serves it in the state this
// request was routed by. The last address in $upstream_addr answered; the local stack names its addresses'
// slots ($canary_slots). Elsewhere (compose's addresses are resolved names), an answer after a failover came from
// the other colour: every backup server of an upstream is the other colour's. "" when no backend answered.
function answered(r) {
    const tried = r.variables.upstream_addr;
    if (!tried) {
        return '';
    }
    const parts = r.variables.canary_decision.split(' ');
    const addresses = tried.split(/, | : /);
    let slots = {};
    try {
        slots = JSON.parse(r.variables.canary_slots || '{}');
    } catch (e) {
        slots = {};
    }
    let colour = slots[addresses[addresses.length - 1]];
    if (colour === undefined) {
        const routed = r.variables.canary_served === 'green' ? 'green' : 'blue';
        colour = addresses.length > 1 ? (routed === 'green' ? 'blue' : 'green') : routed;
    } else if (colour !== 'blue') {
        colour = colour === parts[1] ? 'green' : '';  // green's other slot: a version being started, not routed
    }
    const version = colour === 'blue' ? parts[3] : colour === 'green' ? parts[4] : '-';
    return version === '-' || version === undefined ? '' : version;
}

// Where a prediction endpoint's answers hold the rows' predictions: the steps of a JSON path, as
// canary_kit/jsonpath.py compiles it (a name, an index, or "*" for the rows); the same rule as its select().
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

// An array of JSON scalars, matched without building it: what a large answer's predictions are read by when they
// are its first member ({"predictions": [...], ...}), so that a batch's probabilities are never parsed.
const SCALAR = '(?:"(?:[^"\\\\]|\\\\.)*"|-?[0-9][-+.0-9eE]*|true|false|null)';
const FLAT = '(\\[\\s*(?:' + SCALAR + '(?:\\s*,\\s*' + SCALAR + ')*)?\\s*\\])';
const LARGE = 4096;  // bytes: smaller answers are parsed whole (a few microseconds)
const MAX_ANSWER = 8 * 1024 * 1024;  // bytes: larger answers are not read (they pass on untouched)

// The predictions text (a JSON array) at `steps` in the answer `text`, or null.
function predictionsIn(text, steps) {
    if (text.length > LARGE && steps.length === 2 && typeof steps[0] === 'string' && steps[1] === '*') {
        const first = new RegExp('^\\s*\\{\\s*"' + steps[0] + '"\\s*:\\s*' + FLAT).exec(text);
        if (first) {
            return first[1];
        }
    }
    let answer;
    try {
        answer = JSON.parse(text);
    } catch (e) {
        return null;
    }
    const found = select(steps, answer);
    return found === null ? null : JSON.stringify(found);
}

// js_body_filter for the prediction endpoints: every chunk passes on at once; a 200 answer's text is kept and,
// at its end, its predictions (and confidences, when the endpoint names where they are) are read into
// $canary_predictions and $canary_confidence for the access log. Nothing here can fail or delay an answer.
let kept = [];
let size = 0;
let skip = false;

function observe(r, data, flags) {
    r.sendBuffer(data, flags);
    if (skip) {
        return;
    }
    if (r.status !== 200 || r.headersOut['Content-Encoding']) {
        skip = true;
        return;
    }
    size += data.length;
    if (size > MAX_ANSWER) {
        skip = true;
        kept = [];
        return;
    }
    kept.push(data);
    if (!flags.last) {
        return;
    }
    try {
        const where = JSON.parse(r.variables.canary_observe || '{}')[r.variables.canary_path];
        if (!where || !where.predictions) {
            return;
        }
        const text = kept.join('');
        const predictions = predictionsIn(text, where.predictions);
        if (predictions !== null) {
            r.variables.canary_predictions = predictions;
        }
        if (where.confidence) {
            const selected = select(where.confidence, JSON.parse(text));
            const rows = selected === null ? null : confidences(selected);
            if (rows !== null) {
                r.variables.canary_confidence = JSON.stringify(rows);
            }
        }
    } catch (e) {
        // an answer that is not what the path expects is logged without predictions: the kit counts those
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
