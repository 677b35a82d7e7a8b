// A real OpenID Connect provider for the web console's browser test
// (tests/test_web_signatures.py): the certified `oidc-provider` package, on plain http on the
// loopback address (the API takes an http issuer there only), with its own login form.
//
// Configured from the environment:
//   PORT          the port on 127.0.0.1 (the issuer is http://127.0.0.1:PORT)
//   CLIENT_ID     the console's client: public (no secret), code flow with PKCE
//   REDIRECT_URI  the console's address, /app/ (also where sign-out comes back to)
//   AUDIENCE      the API's audience (WORKSESSION_JWT_AUDIENCE): access tokens are JWTs for it
//   ACCOUNTS      {"login": {"name": "...", "role": "worker|supervisor|admin"}, ...}
//   ACCESS_TTL    access tokens' lifetime in seconds (default 600)
// Prints `listening on <issuer>` once it serves.
import { generateKeyPairSync } from 'node:crypto';

import Provider, { errors } from 'oidc-provider';

const env = (name, fallback) => {
  const value = process.env[name] ?? fallback;
  if (value === undefined) throw new Error(`${name} is not set`);
  return value;
};
const port = Number(env('PORT'));
const issuer = `http://127.0.0.1:${port}`;
const clientId = env('CLIENT_ID');
const redirectUri = env('REDIRECT_URI');
const audience = env('AUDIENCE');
const accounts = JSON.parse(env('ACCOUNTS'));
const accessTtl = Number(env('ACCESS_TTL', '600'));

// A fresh RS256 key (2048 bits, as the API requires) each run: published at the JWKS address.
const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const signingKey = { ...privateKey.export({ format: 'jwk' }), kid: 'test-rs256', use: 'sig', alg: 'RS256' };

const SCOPES = 'openid profile offline_access';

const provider = new Provider(issuer, {
  jwks: { keys: [signingKey] },
  clients: [{
    client_id: clientId,
    token_endpoint_auth_method: 'none', // a public client: PKCE, no secret (pkce is required)
    application_type: 'web',
    grant_types: ['authorization_code', 'refresh_token'],
    response_types: ['code'],
    redirect_uris: [redirectUri],
    post_logout_redirect_uris: [redirectUri],
  }],
  // The login form (any password) and the sign-out page are the package's own.
  features: {
    devInteractions: { enabled: true },
    rpInitiatedLogout: { enabled: true },
    // Access tokens are JWTs for the API (its audience), signed with the key above: the API
    // checks them as it checks any provider's (api/oidc.py).
    resourceIndicators: {
      enabled: true,
      defaultResource: () => audience,
      useGrantedResource: () => true,
      getResourceServerInfo: (ctx, resource) => {
        if (resource !== audience) throw new errors.InvalidTarget();
        return {
          scope: 'worksession', audience, accessTokenTTL: accessTtl, accessTokenFormat: 'jwt',
          jwt: { sign: { alg: 'RS256' } },
        };
      },
    },
  },
  claims: { openid: ['sub'], profile: ['name', 'role'] },
  findAccount: (ctx, sub) => ({
    accountId: sub,
    claims: () => ({ sub, name: accounts[sub]?.name, role: accounts[sub]?.role }),
  }),
  // What the API needs in the access token besides iss/aud/sub/exp: the person's name and
  // role, and when they signed in (`auth_time`, kept through refreshes: a refreshed token is
  // no new sign-in, so it cannot make a signature fresh).
  extraTokenClaims: (ctx, token) => {
    const { AuthorizationCode: code, RefreshToken: refresh } = ctx.oidc.entities;
    const account = accounts[token.accountId] || {};
    return { name: account.name, role: account.role, auth_time: (code || refresh)?.authTime };
  },
  // The console is the company's own application: no consent page, a grant at once.
  loadExistingGrant: async (ctx) => {
    const grantId = ctx.oidc.result?.consent?.grantId
      || ctx.oidc.session.grantIdFor(ctx.oidc.client.clientId);
    if (grantId) {
      const found = await ctx.oidc.provider.Grant.find(grantId);
      if (found) return found;
    }
    const grant = new ctx.oidc.provider.Grant({
      clientId: ctx.oidc.client.clientId, accountId: ctx.oidc.session.accountId,
    });
    grant.addOIDCScope(SCOPES);
    grant.addResourceScope(audience, 'worksession');
    await grant.save();
    return grant;
  },
  // A refresh token at every sign-in, as Keycloak gives one (the package's default wants
  // `offline_access`, which it grants only with prompt=consent).
  issueRefreshToken: (ctx, client) => client.grantTypeAllowed('refresh_token'),
  ttl: { AccessToken: accessTtl, IdToken: accessTtl },
  cookies: { keys: ['worksession-test-provider-cookie-key'] },
  pkce: { required: () => true },
});
provider.proxy = false;

provider.listen(port, '127.0.0.1', () => {
  console.log(`listening on ${issuer}`);
});
