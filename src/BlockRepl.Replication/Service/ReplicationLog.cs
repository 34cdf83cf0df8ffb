using BlockRepl.Core;
using Microsoft.Extensions.Logging;

namespace BlockRepl.Replication.Service;

/// <summary>Every log line of replication, so they read the same everywhere and cost nothing when filtered.</summary>
internal static partial class ReplicationLog
{
    [LoggerMessage(EventId = LogEventIds.Replication + 0, Level = LogLevel.Information, Message = "volume {Volume}: connecting to peer {Peer}")]
    public static partial void Connecting(ILogger logger, string volume, string peer);

    [LoggerMessage(EventId = LogEventIds.Replication + 1, Level = LogLevel.Information, Message = "volume {Volume}: connected to peer {Peer}: {Decision}")]
    public static partial void Connected(ILogger logger, string volume, string peer, string decision);

    [LoggerMessage(EventId = LogEventIds.Replication + 2, Level = LogLevel.Warning, Message = "volume {Volume}: peer {Peer} lost: {Reason}")]
    public static partial void PeerLost(ILogger logger, string volume, string peer, string reason);

    [LoggerMessage(EventId = LogEventIds.Replication + 3, Level = LogLevel.Error, Message = "volume {Volume}: peer {Peer} refused the connection: {Reason}")]
    public static partial void Refused(ILogger logger, string volume, string peer, string reason);

    [LoggerMessage(EventId = LogEventIds.Replication + 4, Level = LogLevel.Warning, Message = "volume {Volume}: stepping down to secondary: {Reason}")]
    public static partial void SteppingDown(ILogger logger, string volume, string reason);

    [LoggerMessage(EventId = LogEventIds.Replication + 10, Level = LogLevel.Information, Message = "volume {Volume}: replication stream from {Remote} accepted: {Decision}")]
    public static partial void StreamAccepted(ILogger logger, string volume, string remote, string decision);

    [LoggerMessage(EventId = LogEventIds.Replication + 11, Level = LogLevel.Error, Message = "replication stream from {Remote} refused: {Reason}")]
    public static partial void StreamRefused(ILogger logger, string remote, string reason);

    [LoggerMessage(EventId = LogEventIds.Replication + 12, Level = LogLevel.Warning, Message = "volume {Volume}: replication stream from {Remote} ended: {Reason}")]
    public static partial void StreamEnded(ILogger logger, string volume, string remote, string reason);

    [LoggerMessage(EventId = LogEventIds.Replication + 13, Level = LogLevel.Error, Message = "replication stream from {Remote} rejected: {Reason}; nothing of it was applied")]
    public static partial void StreamRejected(ILogger logger, string remote, string reason);

    [LoggerMessage(EventId = LogEventIds.Replication + 15, Level = LogLevel.Warning, Message = "replication port: connection from {Remote} closed without a gRPC request (not HTTP/2, or garbage); nothing applied")]
    public static partial void NotGrpc(ILogger logger, string remote);

    [LoggerMessage(EventId = LogEventIds.Replication + 14, Level = LogLevel.Information, Message = "volume {Volume}: {Message}")]
    public static partial void Info(ILogger logger, string volume, string message);
}
