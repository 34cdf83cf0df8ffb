using Google.Protobuf;

namespace BlockRepl.Replication.Grpc;

/// <summary>One parser per message type, made once (generated messages all have a public parameterless constructor).</summary>
internal static class MessageParserCache<T>
    where T : class, IMessage<T>, new()
{
    public static readonly MessageParser<T> Parser = new(static () => new T());
}
