using BlockRepl.Core;
using Microsoft.Extensions.Logging;

namespace BlockRepl.Nbd;

internal static partial class NbdLog
{
    [LoggerMessage(LogEventIds.Nbd + 1, LogLevel.Information, "NBD listening on {Endpoint}")]
    public static partial void Listening(ILogger logger, string endpoint);

    [LoggerMessage(LogEventIds.Nbd + 2, LogLevel.Information, "NBD client {Remote} attached to export {Export} (structured replies: {Structured}, base:allocation: {BaseAllocation})")]
    public static partial void ClientConnected(ILogger logger, string remote, string export, bool structured, bool baseAllocation);

    [LoggerMessage(LogEventIds.Nbd + 3, LogLevel.Debug, "NBD client {Remote} disconnected")]
    public static partial void ClientDisconnected(ILogger logger, string remote);

    [LoggerMessage(LogEventIds.Nbd + 4, LogLevel.Information, "NBD client {Remote} ended the handshake: {Reason}")]
    public static partial void HandshakeEnded(ILogger logger, string remote, string reason);

    [LoggerMessage(LogEventIds.Nbd + 5, LogLevel.Warning, "NBD client {Remote} broke the protocol, closing: {Reason}")]
    public static partial void ProtocolViolation(ILogger logger, string remote, string reason);

    [LoggerMessage(LogEventIds.Nbd + 6, LogLevel.Information, "NBD client {Remote} connection lost: {Reason}")]
    public static partial void ConnectionLost(ILogger logger, string remote, string reason);

    [LoggerMessage(LogEventIds.Nbd + 7, LogLevel.Error, "NBD connection {Remote} failed")]
    public static partial void ConnectionFailed(ILogger logger, string remote, Exception exception);

    [LoggerMessage(LogEventIds.Nbd + 8, LogLevel.Warning, "NBD {Command} {Offset}+{Length} from {Remote} failed: {Reason}")]
    public static partial void RequestFailed(ILogger logger, string remote, string command, ulong offset, uint length, string reason);

    [LoggerMessage(LogEventIds.Nbd + 9, LogLevel.Warning, "NBD refused a connection from {Remote}: {Limit} connections already open")]
    public static partial void TooManyConnections(ILogger logger, string remote, int limit);

    [LoggerMessage(LogEventIds.Nbd + 10, LogLevel.Information, "NBD server stopping: {Connections} connections to finish")]
    public static partial void Stopping(ILogger logger, int connections);

    [LoggerMessage(LogEventIds.Nbd + 11, LogLevel.Error, "NBD accept loop on {Endpoint} failed")]
    public static partial void AcceptFailed(ILogger logger, string endpoint, Exception exception);
}
