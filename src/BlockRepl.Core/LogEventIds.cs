namespace BlockRepl.Core;

/// <summary>
/// The event id ranges of the log areas, stated once: an event id names one message of one area, so a log filter
/// or an alert can select it without the category.
/// </summary>
/// <remarks>
/// <code>
/// area         class            ids
/// ------------ ---------------- -----------
/// NBD          NbdLog           1000-1999
/// iSCSI        IscsiLog         2000-2999
/// replication  ReplicationLog   3000-3999
/// daemon       DaemonLog        4000-4999
/// core         (none yet)       5000-5999
/// </code>
/// Each log class writes its ids as <c>Area + n</c>.
/// </remarks>
public static class LogEventIds
{
    public const int Nbd = 1000;

    public const int Iscsi = 2000;

    public const int Replication = 3000;

    public const int Daemon = 4000;

    public const int Core = 5000;
}
