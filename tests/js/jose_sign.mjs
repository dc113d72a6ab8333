// Signs tokens with `jose` (npm, v6) as a user's own issuer would: Ed25519 under RFC 9864's
// fully-specified alg name (what jose v6 uses) and ES512 (P-521), plus an EdDSA-named token from
// the same Ed25519 key. Prints {"jwks": {...}, "tokens": {"Ed25519": ..., "EdDSA": ..., "ES512": ...}}.
// Run with the working directory holding node_modules/jose: node --input-type=module -e "$(cat ...)" '<claims json>'
import { generateKeyPair, exportJWK, SignJWT } from "jose";

const claims = JSON.parse(process.argv[1] ?? "{}");
const out = { jwks: { keys: [] }, tokens: {} };
for (const [alg, kid] of [["Ed25519", "jose-ed25519"], ["ES512", "jose-p521"]]) {
  const { publicKey, privateKey } = await generateKeyPair(alg, { extractable: true });
  const jwk = await exportJWK(publicKey);
  out.jwks.keys.push({ ...jwk, kid, alg, use: "sig" });
  out.tokens[alg] = await new SignJWT(claims).setProtectedHeader({ alg, kid, typ: "JWT" }).sign(privateKey);
  if (alg === "Ed25519") {
    // the polymorphic name, same key: a key published as Ed25519 verifies it too
    out.tokens.EdDSA = await new SignJWT(claims).setProtectedHeader({ alg: "EdDSA", kid }).sign(privateKey);
  }
}
process.stdout.write(JSON.stringify(out));
