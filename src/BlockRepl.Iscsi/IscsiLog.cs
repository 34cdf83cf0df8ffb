using BlockRepl.Core;
using Microsoft.Extensions.Logging;

namespace BlockRepl.Iscsi;

internal static partial class IscsiLog
{
    [LoggerMessage(LogEventIds.Iscsi + 1, LogLevel.Information, "iSCSI listening on {Endpoint}")]
    public static partial void Listening(ILogger logger, string endpoint);

    [LoggerMessage(LogEventIds.Iscsi + 2, LogLevel.Information, "iSCSI initiator {Initiator} ({Remote}) logged in to {Target} (session {Tsih}, {SessionType}, auth {Auth}, digests header {HeaderDigest} data {DataDigest})")]
    public static partial void LoggedIn(ILogger logger, string remote, string initiator, string target, ushort tsih, string sessionType, string auth, string headerDigest, string dataDigest);

    [LoggerMessage(LogEventIds.Iscsi + 3, LogLevel.Information, "iSCSI login from {Remote} refused ({Status:x4}): {Reason}")]
    public static partial void LoginRefused(ILogger logger, string remote, int status, string reason);

    [LoggerMessage(LogEventIds.Iscsi + 4, LogLevel.Debug, "iSCSI connection {Remote} closed")]
    public static partial void Disconnected(ILogger logger, string remote);

    [LoggerMessage(LogEventIds.Iscsi + 5, LogLevel.Warning, "iSCSI initiator {Remote} broke the protocol, closing: {Reason}")]
    public static partial void ProtocolViolation(ILogger logger, string remote, string reason);

    [LoggerMessage(LogEventIds.Iscsi + 6, LogLevel.Information, "iSCSI connection {Remote} lost: {Reason}")]
    public static partial void ConnectionLost(ILogger logger, string remote, string reason);

    [LoggerMessage(LogEventIds.Iscsi + 7, LogLevel.Error, "iSCSI connection {Remote} failed")]
    public static partial void ConnectionFailed(ILogger logger, string remote, Exception exception);

    [LoggerMessage(LogEventIds.Iscsi + 8, LogLevel.Warning, "iSCSI refused a connection from {Remote}: {Limit} connections already open")]
    public static partial void TooManyConnections(ILogger logger, string remote, int limit);

    [LoggerMessage(LogEventIds.Iscsi + 9, LogLevel.Information, "iSCSI server stopping: {Connections} connections to finish")]
    public static partial void Stopping(ILogger logger, int connections);

    [LoggerMessage(LogEventIds.Iscsi + 10, LogLevel.Error, "iSCSI accept loop on {Endpoint} failed")]
    public static partial void AcceptFailed(ILogger logger, string endpoint, Exception exception);

    [LoggerMessage(LogEventIds.Iscsi + 11, LogLevel.Information, "iSCSI {Remote} logged out (session {Tsih})")]
    public static partial void LoggedOut(ILogger logger, string remote, ushort tsih);

    [LoggerMessage(LogEventIds.Iscsi + 12, LogLevel.Information, "iSCSI {Remote} task management {Function} (LUN {Lun}, task 0x{Task:x8}): response {Response}")]
    public static partial void TaskManagement(ILogger logger, string remote, int function, ulong lun, uint task, int response);

    [LoggerMessage(LogEventIds.Iscsi + 13, LogLevel.Information, "iSCSI session of {Initiator} (ISID 0x{Isid:x12}) reinstated by a new login: closing the old connection")]
    public static partial void Reinstated(ILogger logger, string initiator, ulong isid);

    [LoggerMessage(LogEventIds.Iscsi + 15, LogLevel.Warning, "iSCSI {Remote} sent a Data-Out out of sequence for task 0x{Task:x8} ({Reason}): the command fails")]
    public static partial void DataOutRejected(ILogger logger, string remote, uint task, string reason);

    [LoggerMessage(LogEventIds.Iscsi + 14, LogLevel.Warning, "iSCSI {Remote} sent an unsupported PDU (opcode 0x{Opcode:x2}): rejected")]
    public static partial void Rejected(ILogger logger, string remote, int opcode);
}
