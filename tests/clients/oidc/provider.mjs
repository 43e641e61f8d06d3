// An OpenID provider for the sign-in tests: `oidc-provider` (npm) on
// 127.0.0.1, with test users read from a JSON file at every lookup, so a
// test removes a user (deprovisioning) by rewriting the file.
//
// Environment:
//   OIDC_PORT            the port (127.0.0.1 only)
//   OIDC_USERS           {"<account id>": {"email": …, "name": …, "groups": [...]}, …}
//   OIDC_CLIENT_ID, OIDC_CLIENT_SECRET, OIDC_REDIRECT_URI   the gateway as a client
//   OIDC_GROUPS_IN_ID_TOKEN=0   keep email and groups out of the id_token (userinfo only)
//   OIDC_KID             the signing key's id (a new RSA key every start)
//
// Logging in goes through oidc-provider's development interactions: a login
// form (any password) and a consent form, which the tests submit like a
// browser. Prints `READY <issuer>` once it listens.
import fs from 'node:fs';
import http from 'node:http';
import { generateKeyPairSync } from 'node:crypto';
import Provider from 'oidc-provider';

const port = Number(process.env.OIDC_PORT);
const issuer = `http://127.0.0.1:${port}`;
const users = () => JSON.parse(fs.readFileSync(process.env.OIDC_USERS, 'utf8'));

const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const jwk = { ...privateKey.export({ format: 'jwk' }), kid: process.env.OIDC_KID || `test-${process.pid}`, use: 'sig', alg: 'RS256' };

const provider = new Provider(issuer, {
  clients: [{
    client_id: process.env.OIDC_CLIENT_ID,
    client_secret: process.env.OIDC_CLIENT_SECRET,
    redirect_uris: [process.env.OIDC_REDIRECT_URI],
    grant_types: ['authorization_code', 'refresh_token'],
    response_types: ['code'],
    token_endpoint_auth_method: 'client_secret_basic',
  }],
  jwks: { keys: [jwk] },
  scopes: ['openid', 'offline_access', 'email', 'profile', 'groups'],
  claims: { openid: ['sub'], email: ['email', 'email_verified'], profile: ['name'], groups: ['groups'] },
  conformIdTokenClaims: process.env.OIDC_GROUPS_IN_ID_TOKEN === '0',
  async findAccount(_ctx, id) {
    const user = users()[id];
    if (!user) return undefined;
    return {
      accountId: id,
      async claims() {
        return { sub: id, email: user.email, email_verified: true, name: user.name, groups: user.groups ?? [] };
      },
    };
  },
  // A refresh token for the gateway whenever its client may refresh, as a
  // real IdP does once `offline_access` is granted.
  async issueRefreshToken(_ctx, client) {
    return client.grantTypeAllowed('refresh_token');
  },
  rotateRefreshToken: true,
  pkce: { required: () => true },
  ttl: { AccessToken: 300, IdToken: 300, RefreshToken: 86400, AuthorizationCode: 60, Interaction: 600, Session: 3600, Grant: 86400 },
  features: { devInteractions: { enabled: true }, userinfo: { enabled: true } },
  cookies: { keys: ['modelgate-test-oidc-cookies'] },
});
provider.on('server_error', (_ctx, err) => console.error('server_error', err));

const server = http.createServer(provider.callback());
server.listen(port, '127.0.0.1', () => console.log(`READY ${issuer}`));
for (const sig of ['SIGTERM', 'SIGINT']) process.on(sig, () => server.close(() => process.exit(0)));
