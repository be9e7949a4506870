// What nginx reads in each answer of a prediction endpoint as it passes (js_body_filter canary.observe, exported
// by canary.js, which imports this module): the rows' predictions and confidences, into $canary_predictions and
// $canary_confidence for the access log. Never an error, a change or a delay for the answer itself.
// Written for njs 0.7.9 (Debian 12) and 0.8.x (the official nginx image).

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

const isSpace = (b) => b === 32 || b === 10 || b === 13 || b === 9;  // JSON's whitespace

// Where the whitespace in `data` from `at` on ends (data.length when it runs to the end).
function skipSpace(data, at) {
    while (isSpace(data[at])) {
        at++;
    }
    return at;
}

// The bytes of the first member's array once its `]` has arrived (nginx logs them as they are); undefined while it
// has not; null when the answer is not of that form after all (then it is parsed whole). It runs on every batch
// answer, so it looks at single bytes where they are: no regular expression and no string made of the answer's bytes
// (these cost as much as the two scans, indexOf, that it cannot do without).
function firstArray(data) {
    const end = data.indexOf(CLOSE);
    if (end < 0) {
        return undefined;
    }
    const all = kept.length === 1 ? kept[0] : Buffer.concat(kept);
    const close = all.length - data.length + end;  // the `]`, in all
    // Rows that are lists or objects are read whole (their own `]` would end this early). Otherwise the text up to
    // the first `]` is the whole array or no JSON at all: a `]` inside a class name fails these cheap looks at its
    // two ends, or leaves text the kit refuses (the answer is unobserved, never misread).
    const first = all[skipSpace(all, start + 1)];  // the first row's first byte
    const flat = first !== OPEN && first !== 123;  // [ {
    let last = close - 1;
    while (last > start && isSpace(all[last])) {
        last--;
    }
    const b = all[last];  // before the `]`: the array's `[`, a string's `"`, a digit, true's, false's or null's end
    const ends = last === start || b === 34 || (b >= 48 && b <= 57) || b === 101 || b === 108;
    const after = data[skipSpace(data, end + 1)];  // after it: `,`, `}`, or the chunk's end
    const next = after === undefined || after === 44 || after === 125;
    const array = all.slice(start, close + 1);
    return flat && ends && next && array.indexOf(10) < 0 ? array : null;  // one line in the log, as it is
}

// Where the array that is the answer's first member, named `key`, begins ({"key": [ ...), or -1.
function arrayAfter(data, key) {
    let at = skipSpace(data, 0);
    if (data[at] !== 123) {  // {
        return -1;
    }
    at = skipSpace(data, at + 1);
    const name = '"' + key + '"';
    if (data.slice(at, at + name.length).toString() !== name) {
        return -1;
    }
    at = skipSpace(data, at + name.length);
    if (data[at] !== 58) {  // :
        return -1;
    }
    at = skipSpace(data, at + 1);
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

export default { observe };
