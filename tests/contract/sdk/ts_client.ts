// Contract test: the client that openapi-generator's `typescript-fetch` generates from
// openapi/openapi.json, against a running users-api.
//
// Run by tests/contract/sdk.sh, which generates the client into <tmp>/client/, copies this file
// beside it, compiles both with a pinned `tsc --strict` and runs the result with Node (fetch is
// built in). Env: BASE_URL, API_KEY (a key with users:write), RUN_ID (makes this run's emails
// unique), SDK_STRICT=1 (a known generator misread is a failure, not a note).
//
// Prints one line per check, `ok - typescript: …` or `not ok - typescript: …`, and `# …` notes;
// exits 1 when a check failed.

import {
  Configuration,
  ResponseError,
  UsersApi,
  type CreateUserBody,
  type CreateUserV1Body,
  CreateUserBodyToJSON,
  CreateUserV1BodyToJSON,
  ErrorCode,
  type ErrorResponse,
  ErrorResponseFromJSON,
  instanceOfContactUser,
  instanceOfErrorResponse,
  instanceOfLinkedUser,
  instanceOfMemberUser,
  instanceOfPersonUser,
  instanceOfSignUpUser,
  type InitOverrideFunction,
  NewContactUserToJSON,
  NewUserWithExternalIdToJSON,
  NewUserByOperatorToJSON,
  NewPersonUserToJSON,
  NewSignUpUserToJSON,
} from './client/index';

// No @types/node: only what this file uses.
declare const process: { env: Record<string, string | undefined>; exitCode?: number };

const env = process.env;
const BASE_URL = env.BASE_URL ?? '';
const API_KEY = env.API_KEY ?? '';
const RUN = env.RUN_ID || Math.random().toString(36).slice(2, 10);
const STRICT = env.SDK_STRICT === '1';

let failed = 0;

function check(name: string, condition: boolean, detail: unknown = ''): boolean {
  if (condition) {
    console.log(`ok - typescript: ${name}`);
  } else {
    failed += 1;
    const text = typeof detail === 'string' ? detail : JSON.stringify(detail);
    console.log(`not ok - typescript: ${name}: ${String(text).replace(/\s+/g, ' ')}`);
  }
  return condition;
}

function knownIssue(name: string, detail: string): void {
  if (STRICT) {
    check(name, false, detail);
  } else {
    console.log(`# known issue: ${name}: ${detail}`);
  }
}

const email = (tag: string): string => `ts-${tag}-${RUN}@example.com`;
const randomPassword = (): string => `sdk-pass-${Math.random().toString(36).slice(2)}${Date.now()}`;

const authed = new UsersApi(new Configuration({ basePath: BASE_URL, accessToken: API_KEY }));
const anonymous = new UsersApi(new Configuration({ basePath: BASE_URL }));

// typescript-fetch serializes a oneOf request body by trying `instanceOfX` for each variant in
// alphabetical order of the schema names, and `instanceOfX` only asks whether X's *required* keys are
// present (`additionalProperties: false` is not consulted). A NewPersonUser has NewUserWithExternalId's only
// required key (`email`) and NewUserWithExternalId sorts first, so CreateUserBodyToJSON sends a Person as a
// Linked body with firstName and lastName dropped; likewise a NewSignUpUser with a `name` goes out as
// a NewUserByOperator without its password. Each create below first checks whether the union serializer
// keeps the variant it was given; when it does not, that is reported, and the body is serialized with
// the variant's own generated XToJSON through the generated client's `initOverrides` hook.
function sendAs(viaUnion: unknown, viaVariant: unknown, label: string): InitOverrideFunction | undefined {
  const hidePassword = (key: string, value: unknown): unknown => (key === 'password' ? '<password>' : value);
  const union = JSON.stringify(viaUnion, hidePassword);
  const variant = JSON.stringify(viaVariant, hidePassword);
  if (union === variant) {
    return undefined;
  }
  knownIssue(
    `${label} through the oneOf serializer`,
    `sends ${union} instead of ${variant}; sent with the variant's own ToJSON instead`,
  );
  // The runtime JSON-encodes `init.body` after the hook, so the hook hands it the object.
  return async ({ init }) => ({ ...init, body: viaVariant as unknown as BodyInit });
}

async function scenario(name: string, body: () => Promise<void>): Promise<void> {
  try {
    await body();
  } catch (err) {
    check(name, false, err instanceof Error ? `${err.name}: ${err.message}` : String(err));
  }
}

function keysOf(value: object): string {
  return Object.keys(value).sort().join(',');
}

async function main(): Promise<void> {
  await scenario('NewContactUser -> 201 ContactUser', async () => {
    const contactEmail = email('contact');
    const body: CreateUserBody = { firstName: 'Ada', lastName: 'Lovelace', contactEmail };
    const fix = sendAs(CreateUserBodyToJSON(body), NewContactUserToJSON(body), 'NewContactUser');
    const raw = await authed.createUserRaw({ createUserBody: body }, fix);
    const u = await raw.value();
    const ok = check(
      'NewContactUser -> 201 ContactUser',
      raw.raw.status === 201 && instanceOfContactUser(u) && !instanceOfPersonUser(u) && !instanceOfLinkedUser(u),
      { status: raw.raw.status, u },
    );
    if (ok && instanceOfContactUser(u)) {
      check(
        'ContactUser fields',
        u.firstName === 'Ada' && u.lastName === 'Lovelace' && u.contactEmail === contactEmail &&
          Number.isInteger(u.userId) && u.userId > 0,
        u,
      );
      check('ContactUser 201 has a Location header', !!raw.raw.headers.get('location'));
    }
  });

  await scenario('NewPersonUser -> 201 PersonUser', async () => {
    const address = email('person');
    const body: CreateUserBody = { firstName: 'John', lastName: 'Meere', email: address };
    const fix = sendAs(CreateUserBodyToJSON(body), NewPersonUserToJSON(body), 'NewPersonUser');
    const u = await authed.createUser({ createUserBody: body }, fix);
    const ok = check(
      'NewPersonUser -> 201 PersonUser',
      instanceOfPersonUser(u) && !instanceOfContactUser(u) && !instanceOfLinkedUser(u),
      u,
    );
    if (ok && instanceOfPersonUser(u)) {
      check(
        'PersonUser fields',
        u.firstName === 'John' && u.lastName === 'Meere' && u.email === address && Number.isInteger(u.id) && u.id > 0,
        u,
      );
    }
  });

  await scenario('NewUserWithExternalId -> 201 LinkedUser', async () => {
    const address = email('linked');
    const userId = `ts-linked-${RUN}`;
    const metadata = { plan: 'pro', seats: 3 };
    const body: CreateUserBody = { email: address, userId, name: 'Test API', metadata };
    const fix = sendAs(CreateUserBodyToJSON(body), NewUserWithExternalIdToJSON(body), 'NewUserWithExternalId');
    const u = await authed.createUser({ createUserBody: body }, fix);
    const ok = check(
      'NewUserWithExternalId -> 201 LinkedUser',
      instanceOfLinkedUser(u) && !instanceOfContactUser(u) && !instanceOfPersonUser(u),
      u,
    );
    if (ok && instanceOfLinkedUser(u)) {
      check(
        'LinkedUser fields',
        u.message === 'resource created successfully' && u.userId === userId && u.email === address &&
          u.creditBalance === 0 && u.name === 'Test API' && JSON.stringify(u.metadata) === JSON.stringify(metadata) &&
          Number.isInteger(u.createdAt) && new RegExp(`^${u.createdAt}_[A-Za-z0-9]{5}$`).test(u.klaimId),
        u,
      );
      check(
        'LinkedUser has the eight fields',
        keysOf(u) === 'createdAt,creditBalance,email,klaimId,message,metadata,name,userId',
        keysOf(u),
      );
    }
  });

  await scenario('NewSignUpUser without a key -> 201 SignUpUser', async () => {
    const address = email('signup');
    const body: CreateUserV1Body = { email: address, password: randomPassword(), name: 'Jane Doe' };
    const fix = sendAs(CreateUserV1BodyToJSON(body), NewSignUpUserToJSON(body), 'NewSignUpUser');
    const u = await anonymous.createUserV1({ createUserV1Body: body }, fix);
    const ok = check('NewSignUpUser without a key -> 201 SignUpUser', instanceOfSignUpUser(u) && !instanceOfMemberUser(u), u);
    if (ok && instanceOfSignUpUser(u)) {
      check(
        'SignUpUser fields',
        /^user_[0-9a-f]{32}$/.test(u.id) && u.email === address && u.name === 'Jane Doe' && u.status === 'active' &&
          u.createdAt instanceof Date && !Number.isNaN(u.createdAt.getTime()) && u.updatedAt instanceof Date,
        u,
      );
    }
  });

  await scenario('NewUserByOperator with a key -> 201 MemberUser', async () => {
    const address = email('member');
    const metadata = { company: 'Acme Inc', department: 'Engineering' };
    const body: CreateUserV1Body = { email: address, name: 'John Doe', role: 'admin', metadata };
    const fix = sendAs(CreateUserV1BodyToJSON(body), NewUserByOperatorToJSON(body), 'NewUserByOperator');
    const u = await authed.createUserV1({ createUserV1Body: body }, fix);
    const ok = check('NewUserByOperator with a key -> 201 MemberUser', instanceOfMemberUser(u) && !instanceOfSignUpUser(u), u);
    if (ok && instanceOfMemberUser(u)) {
      check(
        'MemberUser fields',
        /^usr_[0-9a-f]{32}$/.test(u.id) && u.email === address && u.name === 'John Doe' && u.role === 'admin' &&
          JSON.stringify(u.metadata) === JSON.stringify(metadata) && u.createdAt instanceof Date,
        u,
      );
    }
  });

  // Errors: the generated client throws ResponseError for any status >= 400; its body is read and
  // parsed with the generated ErrorResponseFromJSON.
  async function expectError(
    name: string,
    call: () => Promise<unknown>,
    status: number,
    code: ErrorCode,
    field: string,
    fieldError: string,
  ): Promise<void> {
    try {
      const value = await call();
      check(name, false, { unexpectedSuccess: value });
    } catch (err) {
      if (!check(`${name}: ResponseError`, err instanceof ResponseError, String(err))) return;
      const response = (err as ResponseError).response;
      check(`${name}: status`, response.status === status, response.status);
      const json: unknown = await response.json();
      const parsed: ErrorResponse = ErrorResponseFromJSON(json);
      check(
        `${name}: body is an ErrorResponse with error ${code}`,
        typeof json === 'object' && json !== null && instanceOfErrorResponse(json) && parsed.error === code &&
          typeof parsed.message === 'string',
        json,
      );
      check(
        `${name}: details name ${field} ${fieldError}`,
        (parsed.details ?? []).some((d) => d.field === field && d.error === fieldError),
        parsed.details,
      );
    }
  }

  await scenario('duplicate email -> 409', () =>
    expectError(
      'duplicate email -> 409',
      () => {
        // The Contact user's email again, upper-cased, through the other path.
        const body: CreateUserV1Body = { email: email('contact').toUpperCase(), name: 'Dup' };
        return authed.createUserV1({ createUserV1Body: body }, sendAs(CreateUserV1BodyToJSON(body), NewUserByOperatorToJSON(body), 'NewUserByOperator (409)'));
      },
      409,
      ErrorCode.EmailExists,
      'email',
      'taken',
    ),
  );

  await scenario('bad email -> 422', () =>
    expectError(
      'bad email -> 422',
      () => {
        const body: CreateUserBody = { firstName: 'Bad', lastName: 'Email', contactEmail: 'not-an-email' };
        return authed.createUser({ createUserBody: body }, sendAs(CreateUserBodyToJSON(body), NewContactUserToJSON(body), 'NewContactUser (422)'));
      },
      422,
      ErrorCode.ValidationFailed,
      'contactEmail',
      'invalid_format',
    ),
  );

  process.exitCode = failed ? 1 : 0;
}

main().catch((err: unknown) => {
  console.log(`not ok - typescript: unexpected error: ${String(err)}`);
  process.exitCode = 1;
});
