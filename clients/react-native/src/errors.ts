/** The feed or a bundle failed a check; nothing was changed. `code` says which (the same codes
 * as the Python reference client, `orchestrator/device/phone_client.py`). */
export class UpdateRefused extends Error {
  readonly code: string;
  constructor(code: string, message: string) {
    super(message);
    this.name = "UpdateRefused";
    this.code = code;
  }
}

/** Root metadata refused (`rootmeta.RootError` of the Python side). */
export class RootError extends UpdateRefused {
  constructor(code: string, message: string) {
    super(code, message);
    this.name = "RootError";
  }
}
