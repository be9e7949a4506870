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

// js_set $canary_decision: "ROUTE GREEN_UPSTREAM SHADOW", one read of the state per request, split by maps.
// ROUTE: "green" for green's share of requests, "blue" for the rest. With X-User-ID the draw is the id's hash, so
// a user keeps one version at a given weight and, because green takes the lowest hashes, a user on green stays
// on green as the weight rises; without it the draw is random. GREEN_UPSTREAM: the upstream of green's slot
// ("green_a" or "green_b"), or "blue" while green is free. SHADOW: "on" while /predict is mirrored to green.
function decide(r) {
    const s = state(r);
    const user = r.headersIn['X-User-ID'];
    const draw = user ? unitHash(user) : Math.random();
    const route = draw * 100 < s.green_weight ? 'green' : 'blue';
    return route + ' ' + (s.green_free ? 'blue' : s.green_slot) + ' ' + (s.shadow ? 'on' : 'off');
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

export default { accept, decide, describe, unitHash };
