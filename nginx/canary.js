// Canary routing decided per request from a small JSON state file, so a change of the split never reloads nginx.
//
// The file (CANARY_STATE_FILE in the template) is replaced atomically by `canary` (write a temporary file, then
// rename it): each request reads either the old state or the new one, whole, once, and every worker sees the new
// one from its next request on. A file that is missing, unreadable or invalid routes everything to blue, the
// stable version: never an error. Written for njs 0.7.9 (Debian 12) and 0.8.x (the official nginx image).

import fs from 'fs';

const FALLBACK = { green_weight: 0, shadow: false, green_slot: 'green_a', green_free: false, serial: null };
const SLOTS = ['green_a', 'green_b'];

// The state in force: {green_weight: 0-100, shadow: bool, green_slot, green_free, serial}, plus `problem` when it
// is the fallback. green_free: green serves no version (after `canary finalize`), so green's pins go to blue.
function state(r) {
    let parsed;
    try {
        parsed = JSON.parse(fs.readFileSync(r.variables.canary_state_file));
    } catch (e) {
        return Object.assign({ problem: String(e.message || e) }, FALLBACK);
    }
    const weight = parsed && parsed.green_weight;
    const slot = parsed && parsed.green_slot === undefined ? 'green_a' : parsed && parsed.green_slot;
    if (!Number.isInteger(weight) || weight < 0 || weight > 100 || typeof parsed.shadow !== 'boolean' ||
        SLOTS.indexOf(slot) < 0) {
        return Object.assign(
            { problem: 'invalid state: green_weight must be 0-100, shadow true or false, green_slot green_a or green_b' },
            FALLBACK);
    }
    return {
        green_weight: weight,
        shadow: parsed.shadow,
        green_slot: slot,
        green_free: parsed.green_version === null && typeof parsed.blue_version === 'string',
        serial: parsed.serial === undefined ? null : parsed.serial,
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
