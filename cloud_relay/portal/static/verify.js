// Checks a receipt's inclusion proof in the browser: the document the relay serves for it (the same one
// `btt-edge receipts verify-proof` reads), recomputed here with WebCrypto's SHA-256 as RFC 9162 section 2.1.3.2
// says. The leaf is SHA-256(0x00 || the receipt's canonical bytes): RFC 8785 JSON, which for these integer-only
// records is JSON.stringify with object keys sorted by UTF-16 code units. The verdict names what it checked: the
// receipt is leaf (seq - first_seq) of the settlement's tree of `count` leaves whose root the device signed. The
// signatures themselves (Ed25519 + ML-DSA) are checked by the relay at ingest and by verify-proof, not here.
"use strict";

(function () {
  function canonical(value) {
    if (Array.isArray(value)) {
      return "[" + value.map(canonical).join(",") + "]";
    }
    if (value !== null && typeof value === "object") {
      return "{" + Object.keys(value).sort().map(function (k) {
        return JSON.stringify(k) + ":" + canonical(value[k]);
      }).join(",") + "}";
    }
    if (typeof value === "number" && !Number.isSafeInteger(value)) {
      throw new Error("not an integer: " + value);
    }
    return JSON.stringify(value);
  }

  function hexToBytes(hex) {
    if (typeof hex !== "string" || !/^([0-9a-f]{2})*$/.test(hex)) {
      throw new Error("not hex");
    }
    var out = new Uint8Array(hex.length / 2);
    for (var i = 0; i < out.length; i++) {
      out[i] = parseInt(hex.substr(i * 2, 2), 16);
    }
    return out;
  }

  function toHex(bytes) {
    return Array.prototype.map.call(new Uint8Array(bytes), function (b) {
      return b.toString(16).padStart(2, "0");
    }).join("");
  }

  function concat(prefix, parts) {
    var length = 1 + parts.reduce(function (n, p) { return n + p.length; }, 0);
    var out = new Uint8Array(length);
    out[0] = prefix;
    var at = 1;
    parts.forEach(function (p) { out.set(p, at); at += p.length; });
    return out;
  }

  async function sha256(bytes) {
    return new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
  }

  // RFC 9162 2.1.3.2: verify an inclusion proof of leaf `index` in a tree of `size` leaves.
  async function rootFromProof(index, size, leaf, proof) {
    if (!(index >= 0 && index < size)) {
      throw new Error("leaf index outside the tree");
    }
    var fn = index, sn = size - 1, r = leaf;
    for (var i = 0; i < proof.length; i++) {
      var p = proof[i];
      if (sn === 0) {
        throw new Error("proof longer than the tree is deep");
      }
      if ((fn & 1) || fn === sn) {
        r = await sha256(concat(1, [p, r]));
        if (!(fn & 1)) {
          while (!(fn & 1) && fn !== 0) { fn >>= 1; sn >>= 1; }
        }
      } else {
        r = await sha256(concat(1, [r, p]));
      }
      fn >>= 1; sn >>= 1;
    }
    if (sn !== 0) {
      throw new Error("proof shorter than the tree is deep");
    }
    return r;
  }

  // true when the proof document's receipt is included in its settlement's Merkle root.
  async function verifyProof(doc) {
    var receipt = doc.receipt.signed, settlement = doc.settlement.signed;
    if (receipt.device !== settlement.device || receipt.seq < settlement.first_seq || receipt.seq > settlement.last_seq) {
      return false;
    }
    var body = new TextEncoder().encode(canonical(receipt));
    var leaf = await sha256(concat(0, [body]));
    var proof = doc.proof.map(hexToBytes);
    var root = await rootFromProof(receipt.seq - settlement.first_seq, settlement.count, leaf, proof);
    return toHex(root) === settlement.root;
  }

  window.bttVerifyProof = verifyProof;

  async function onClick(event) {
    var button = event.currentTarget;
    var out = document.getElementById(button.getAttribute("aria-describedby"));
    if (!window.crypto || !crypto.subtle) {
      out.textContent = button.dataset.unavailable;
      out.className = "verdict fails";
      return;
    }
    out.textContent = button.dataset.checking;
    out.className = "verdict";
    var holds = false;
    try {
      var response = await fetch(button.dataset.proofUrl, { credentials: "same-origin", headers: { Accept: "application/json" } });
      holds = response.ok && await verifyProof(await response.json());
    } catch (e) {
      holds = false;
    }
    out.textContent = holds ? button.dataset.holds : button.dataset.fails;
    out.className = "verdict " + (holds ? "holds" : "fails");
    out.dataset.result = holds ? "holds" : "fails";
  }

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("button.verify[data-proof-url]").forEach(function (b) {
      b.addEventListener("click", onClick);
    });
  });
})();
