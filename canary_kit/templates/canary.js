// Canary routing decided per request from a small JSON state file, so a change of the split never reloads nginx.
//
// The file (CANARY_STATE_FILE in the template) is replaced atomically by `canary` (write a temporary file, then
// rename it): each request reads either the old state or the new one, whole, once, and every worker sees the new
// one from its next request on. A file that is missing, unreadable or invalid routes everything to blue, the
// stable version: never an error. Written for njs 0.7.9 (Debian 12) and 0.8.x (the official nginx image).
// The predictions in each answer are read by canary-observe.js, a module of its own; this file hands its filter
// to nginx as canary.observe (nginx imports this file only).

import fs from 'fs';
import reading from 'canary-observe.js';  // beside this file (njs looks there, then in js_path)

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

export default { accept, answered, decide, describe, observe: reading.observe, unitHash };
