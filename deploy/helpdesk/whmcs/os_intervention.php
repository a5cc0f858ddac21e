<?php
/**
 * OS Intervention: forward a client's WHMCS support ticket to intake.
 *
 * Install: copy to <whmcs>/includes/hooks/os_intervention.php and write the configuration
 * file (deploy/helpdesk/README.md, "WHMCS"). WHMCS loads every file in includes/hooks/.
 *
 * Runs on TicketOpen and TicketUserReply (WHMCS hooks-reference/ticket). For a ticket of a
 * logged-in client in one of the configured departments it POSTs one JSON body to intake's
 * /v1/webhooks/whmcs: the hook's own variables as WHMCS passed them, plus
 *
 *   hook          "TicketOpen" | "TicketUserReply"
 *   ticket        {"tid", "userid"} from localAPI GetTicket - a reply carries no
 *                 ticketmask, and every revision must be filed under the ticket's mask
 *   client        {"firstname", "lastname"} from localAPI GetClientsDetails
 *   customfields  [{"id", "name", "type", "value"}] - the ticket's custom fields, read by
 *                 name from WHMCS's tables (GetTicket does not return them)
 *
 * and signs it with the integration scheme of services/intake/signing.py (HMAC-SHA256 over
 * method, path, timestamp, nonce, customer and body digest). Intake maps the client to the
 * provider's account with the integration's account map: a field the client typed never
 * names the account.
 *
 * It never throws into WHMCS (a failure to forward must not fail the client's ticket) and
 * never logs the secret, the body or a field value: only ticket numbers, HTTP status and
 * intake's error codes go to WHMCS's activity log.
 */

use WHMCS\Database\Capsule;

if (!defined('WHMCS')) {
    die('This file cannot be accessed directly');
}

const OS_INTERVENTION_DEFAULT_CONFIG = '/etc/os-intervention/whmcs.ini';

/**
 * The configuration (INI): url, integration, secret_file, departments, timeout.
 *
 * Its path: the constant OS_INTERVENTION_WHMCS_CONFIG (define it in WHMCS's
 * configuration.php), else the environment variable of that name, else
 * /etc/os-intervention/whmcs.ini. Keep it and the secret file outside the web root.
 */
function os_intervention_config(): ?array
{
    $path = defined('OS_INTERVENTION_WHMCS_CONFIG') ? constant('OS_INTERVENTION_WHMCS_CONFIG')
        : (getenv('OS_INTERVENTION_WHMCS_CONFIG') ?: OS_INTERVENTION_DEFAULT_CONFIG);
    $ini = is_readable($path) ? parse_ini_file($path, false, INI_SCANNER_RAW) : false;
    if (!is_array($ini)) {
        os_intervention_log('configuration file ' . $path . ' is missing or unreadable');
        return null;
    }
    $url = trim((string) ($ini['url'] ?? ''));
    $integration = trim((string) ($ini['integration'] ?? ''));
    $secretFile = trim((string) ($ini['secret_file'] ?? ''));
    $secret = ($secretFile !== '' && is_readable($secretFile))
        ? trim((string) file_get_contents($secretFile)) : '';
    $urlPath = (string) parse_url($url, PHP_URL_PATH);
    if (!preg_match('#^https?://#', $url) || $urlPath === '' || $integration === ''
        || $secret === '') {
        os_intervention_log('configuration ' . $path . ' needs url (http[s]://...), '
            . 'integration and a readable, non-empty secret_file');
        return null;
    }
    $query = parse_url($url, PHP_URL_QUERY);
    $departments = array_values(array_filter(array_map('intval',
        preg_split('/[\s,]+/', (string) ($ini['departments'] ?? ''), -1, PREG_SPLIT_NO_EMPTY))));
    return [
        'url' => $url,
        // What intake sees: sign the path and query exactly as sent.
        'path' => $urlPath . (is_string($query) && $query !== '' ? '?' . $query : ''),
        'integration' => $integration,
        'secret' => $secret,
        'departments' => $departments,
        'timeout' => max(1, (int) ($ini['timeout'] ?? 10)),
    ];
}

function os_intervention_log(string $message): void
{
    if (function_exists('logActivity')) {
        logActivity('OS Intervention: ' . $message);
    }
}

/** The ticket's custom fields by name: tblcustomfields (type "support", relid = the
 *  department) joined with tblcustomfieldsvalues (relid = the ticket). */
function os_intervention_customfields(int $ticketId, int $departmentId): array
{
    $names = [];
    $rows = Capsule::table('tblcustomfields')
        ->where('type', 'support')
        ->where('relid', $departmentId)
        ->get(['id', 'fieldname', 'fieldtype']);
    foreach ($rows as $row) {
        $names[(int) $row->id] = ['name' => (string) $row->fieldname,
                                  'type' => (string) $row->fieldtype];
    }
    if (!$names) {
        return [];
    }
    $fields = [];
    $values = Capsule::table('tblcustomfieldsvalues')
        ->where('relid', $ticketId)
        ->whereIn('fieldid', array_keys($names))
        ->get(['fieldid', 'value']);
    foreach ($values as $value) {
        $field = $names[(int) $value->fieldid];
        $fields[] = ['id' => (int) $value->fieldid, 'name' => $field['name'],
                     'type' => $field['type'], 'value' => (string) $value->value];
    }
    return $fields;
}

function os_intervention_body(string $hook, array $vars): string
{
    $ticketId = (int) $vars['ticketid'];
    $ticket = localAPI('GetTicket', ['ticketid' => $ticketId]);
    if (($ticket['result'] ?? '') !== 'success') {
        throw new RuntimeException('GetTicket failed');
    }
    $details = localAPI('GetClientsDetails', ['clientid' => (int) $vars['userid']]);
    if (($details['result'] ?? '') !== 'success') {
        throw new RuntimeException('GetClientsDetails failed');
    }
    // "client" since WHMCS 7; the top-level copy is deprecated but older versions have only it.
    $client = is_array($details['client'] ?? null) ? $details['client'] : $details;
    $payload = array_merge($vars, [
        'hook' => $hook,
        'ticket' => ['tid' => (string) $ticket['tid'], 'userid' => (int) $ticket['userid']],
        'client' => ['firstname' => (string) ($client['firstname'] ?? ''),
                     'lastname' => (string) ($client['lastname'] ?? '')],
        'customfields' => os_intervention_customfields($ticketId, (int) $ticket['deptid']),
    ]);
    return json_encode($payload, JSON_UNESCAPED_SLASHES | JSON_UNESCAPED_UNICODE
        | JSON_INVALID_UTF8_SUBSTITUTE | JSON_THROW_ON_ERROR);
}

/** The X-Intervention-* headers of services/intake/signing.py for a POST of $body. */
function os_intervention_signed_headers(array $config, string $body, string $customer): array
{
    $timestamp = (string) time();
    // New for every request: intake accepts each nonce of an integration once.
    $nonce = bin2hex(random_bytes(16));
    $toSign = implode("\n", ['v1', $config['integration'], 'POST', $config['path'], $timestamp,
                             $nonce, $customer, hash('sha256', $body)]);
    return [
        'Content-Type: application/json',
        'X-Intervention-Integration: ' . $config['integration'],
        'X-Intervention-Timestamp: ' . $timestamp,
        'X-Intervention-Nonce: ' . $nonce,
        'X-Intervention-Customer: ' . $customer,
        'X-Intervention-Signature: v1=' . hash_hmac('sha256', $toSign, $config['secret']),
    ];
}

function os_intervention_post(array $config, string $body, string $customer, string $what): void
{
    $curl = curl_init($config['url']);
    curl_setopt_array($curl, [
        CURLOPT_POST => true,
        CURLOPT_POSTFIELDS => $body,
        CURLOPT_HTTPHEADER => os_intervention_signed_headers($config, $body, $customer),
        CURLOPT_RETURNTRANSFER => true,
        CURLOPT_FOLLOWLOCATION => false,
        CURLOPT_CONNECTTIMEOUT => min(5, $config['timeout']),
        CURLOPT_TIMEOUT => $config['timeout'],
        CURLOPT_PROTOCOLS => CURLPROTO_HTTPS | CURLPROTO_HTTP,
    ]);
    $answer = curl_exec($curl);
    $status = (int) curl_getinfo($curl, CURLINFO_RESPONSE_CODE);
    $failure = $answer === false ? curl_error($curl) : '';
    // No curl_close(): since PHP 8 the handle is freed with $curl (and 8.5 deprecates it).
    if ($answer === false) {
        os_intervention_log($what . ' not delivered: ' . $failure);
        return;
    }
    if ($status < 200 || $status >= 300) {
        // Only intake's error codes: its answers never echo values, but keep the log lean.
        $decoded = json_decode((string) $answer, true);
        $codes = [];
        foreach ((is_array($decoded) ? ($decoded['errors'] ?? []) : []) as $error) {
            if (is_array($error) && isset($error['field'], $error['code'])) {
                $codes[] = $error['field'] . ':' . $error['code'];
            }
        }
        os_intervention_log($what . ' refused by intake (HTTP ' . $status . ')'
            . ($codes ? ': ' . implode(', ', array_slice($codes, 0, 10)) : ''));
    }
}

function os_intervention_forward(string $hook, array $vars): void
{
    $what = $hook . ' of ticket #' . (int) ($vars['ticketid'] ?? 0);
    try {
        $config = os_intervention_config();
        if ($config === null) {
            return;
        }
        if ($config['departments']
            && !in_array((int) ($vars['deptid'] ?? 0), $config['departments'], true)) {
            return;
        }
        $userId = (int) ($vars['userid'] ?? 0);
        if ($userId <= 0) {
            // A guest's ticket: nobody logged in, so nobody whose account could be mapped.
            os_intervention_log($what . ' not forwarded: not opened by a logged-in client');
            return;
        }
        os_intervention_post($config, os_intervention_body($hook, $vars),
                             'client:' . $userId, $what);
    } catch (Throwable $error) {
        os_intervention_log($what . ' not forwarded: ' . get_class($error));
    }
}

add_hook('TicketOpen', 1, function (array $vars) {
    os_intervention_forward('TicketOpen', $vars);
});

add_hook('TicketUserReply', 1, function (array $vars) {
    os_intervention_forward('TicketUserReply', $vars);
});
