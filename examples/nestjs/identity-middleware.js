// Express-style middleware (NestJS: `app.use(requireIdentity())` in main.ts, or `consumer.apply(requireIdentity())`
// in a module's configure): a request without x-user-id / x-tenant-id gets HTTP 400 before any LLM call.
'use strict';

const REQUIRED = ['x-user-id', 'x-tenant-id'];

function requireIdentity() {
  return function identityMiddleware(req, res, next) {
    const missing = REQUIRED.filter((name) => !String(req.headers[name] || '').trim());
    if (missing.length) {
      res.statusCode = 400;
      res.setHeader('content-type', 'application/json');
      res.end(JSON.stringify({
        error: `Missing required identity: ${missing.join(', ')} (send the ${missing.join(' and ')} header(s))`,
        missing,
      }));
      return;
    }
    req.llmcostIdentity = {
      userId: String(req.headers['x-user-id']).trim(),
      tenantId: String(req.headers['x-tenant-id']).trim(),
      accountType: req.headers['x-account-type'] ? String(req.headers['x-account-type']).trim() : undefined,
    };
    next();
  };
}

module.exports = { requireIdentity };
